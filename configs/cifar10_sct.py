"""sCT on CIFAR-10 with DDPM++ (Lu & Song 2024): FID 2.85 (1 step), 2.06 (2 steps).

Starts from the EMA of a TrigFlow run of the same network (configs/cifar10_trigflow.py):
``--config.init_from=<its work directory>``. Batch 512, RAdam lr 1e-4 with betas (0.9, 0.99),
dropout 0.2, EMA half-life 0.5 M images, tangent warmup over 10k steps, 2-step t_mid = 1.1.
The paper does not restate the CIFAR-10 iteration count here; 400k (its ImageNet 64 budget).

Variants: "" (the recipe), "tiny" (same code, tiny widths and budget, for tests).
"""

from pathlib import Path

from ml_collections import config_dict

from cmjax.config.loading import load_config
from cmjax.config.sections import (
    add_run_sections,
    ema_rate_for_half_life,
    objective_section,
    optim_section,
)


def consistency_config(name: str, dropout: float, variant: str) -> config_dict.ConfigDict:
    """The sCT / sCD CIFAR-10 recipe on the TrigFlow config's data and network (they differ
    in the objective and the dropout only)."""
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown cifar10_{name} variant {variant!r}; use '' or 'tiny'")
    config = load_config(f"{Path(__file__).with_name('cifar10_trigflow.py')}:{variant}")
    batch = 512
    config.model.dropout = dropout
    config.objective = objective_section(name, p_mean=-1.0, p_std=1.4, warmup_steps=10_000)
    config.optim = optim_section(learning_rate=1e-4, b1=0.9, b2=0.99)
    config.training.update(
        total_steps=400_000,
        batch_size=batch,
        ema_rates=(ema_rate_for_half_life(500_000, batch),),
    )
    # The EMA of a TrigFlow run of the same network (configs/cifar10_trigflow.py).
    config.init_from = ""
    add_run_sections(config, sampling={})  # the sCM sampler defaults (two_step_t 1.1)
    if variant == "tiny":
        tiny = load_config(f"{Path(__file__).with_name('cifar10_trigflow.py')}:tiny")
        config.training = tiny.training
        config.checkpoint = tiny.checkpoint
        config.objective.warmup_steps = 20
    return config


def get_config(variant: str = "") -> config_dict.ConfigDict:
    return consistency_config("sct", dropout=0.2, variant=variant)
