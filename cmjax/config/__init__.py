"""Config files -> frozen hyperparameters: ``load_config`` reads ``configs/*.py``,
``TrainHParams.from_config`` resolves a config once, ``cmjax.config.sections`` builds the
sections the config files share."""

from cmjax.config.hparams import TrainHParams, validate_config
from cmjax.config.loading import load_config

__all__ = ["TrainHParams", "load_config", "validate_config"]
