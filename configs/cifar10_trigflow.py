"""TrigFlow diffusion on CIFAR-10 with DDPM++ (Lu & Song 2024): the initializer of sCT and the
teacher of sCD (configs/cifar10_sct.py, configs/cifar10_scd.py).

The paper gives no diffusion recipe for CIFAR-10 beyond TrigFlow and its time distribution;
this one is EDM's DDPM++ recipe (Karras et al. 2022: Adam lr 1e-3 with a 10 M-image warmup,
batch 512, dropout 0.13, EMA half-life 0.5 M images, 200 M images) on the TrigFlow loss, with
c_noise(t) = t through DDPM++'s positional embedding. Sampled with 50 DDIM steps.

Variants: "" (the recipe), "tiny" (same code, tiny widths and budget, for tests).
"""

from ml_collections import config_dict

from cmjax.config.sections import (
    add_run_sections,
    data_section,
    ema_rate_for_half_life,
    objective_section,
    optim_section,
    shrink_to_tiny,
)
from cmjax.models.ddpmpp import DDPMPP_CIFAR10

BATCH = 512


def get_config(variant: str = "") -> config_dict.ConfigDict:
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown cifar10_trigflow variant {variant!r}; use '' or 'tiny'")
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = data_section("cifar10", (32, 32, 3), num_classes=0, random_flip=True)
    # DDPM++ as EDM trains it, with the positional embedding of c_noise(t) = t.
    config.model = config_dict.ConfigDict(
        dict(DDPMPP_CIFAR10, time_embedding="positional", noise_cond_scale=1.0, dropout=0.13)
    )
    config.objective = objective_section("trigflow", p_mean=-1.0, p_std=1.4)
    config.optim = optim_section(name="adam", learning_rate=1e-3, warmup_steps=10_000_000 // BATCH)
    config.training = config_dict.ConfigDict(
        dict(
            total_steps=200_000_000 // BATCH,
            batch_size=BATCH,
            ema_rates=(ema_rate_for_half_life(500_000, BATCH),),
        )
    )
    add_run_sections(config)  # DDIM, 50 steps
    if variant == "tiny":
        shrink_to_tiny(
            config, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(16,)
        )
        config.optim.warmup_steps = 0
    return config
