"""Data sources. ``toy2d`` generates 2-D distributions procedurally (no download)."""
