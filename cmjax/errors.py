"""Errors a user can cause; each message is one line that says what to do."""


class ConfigError(ValueError):
    """A config key is unknown, missing or has a bad value."""
