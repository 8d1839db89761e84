"""cmjax: consistency models trained from scratch (iCT and successors) in JAX/Flax."""

from cmjax.hparams import ConfigError, TrainHParams
from cmjax.train_state import TrainState, create_train_state
from cmjax.train_step import make_train_step

__all__ = ["ConfigError", "TrainHParams", "TrainState", "create_train_state", "make_train_step"]
__version__ = "0.1.0"
