"""EDM diffusion on CIFAR-10 with DDPM++ (Karras et al. 2022): FID 1.97 (unconditional, VP,
35 NFE Heun) in the paper. The teacher/initializer of ``configs/cifar10_ect.py``.

EDM's ``train.py --cond=0 --arch=ddpmpp`` recipe: DDPM++ (128 channels, multipliers (2, 2, 2),
4 blocks per resolution, attention at 16x16, dropout 0.13), Adam lr 1e-3 (``10e-4``) with a
linear ramp over the first 10 M images, batch 512, 200 M images (390,625 steps), EMA half-life
0.5 M images = rate 0.5 ** (512 / 500,000) = 0.99929 per step. Not reproduced: EDM's
non-leaking augmentation pipeline (p = 0.12, with its 9-dim augmentation input to the
network), which ECT drops too; EDM's EMA ramp-up over the first images.

Variants: "" (the recipe), "ncsnpp" (the teacher of configs/cifar10_cd.py: the official CD
code's ``cifar10_k_ve`` EDM run, jcm's NCSN++ with Fourier scale 16 and dropout 0.13, 400k
steps at batch 512, the same Adam, ramp and EMA half-life), "tiny" (same code, small widths
and budget, for tests).
"""

from ml_collections import config_dict

from cmjax.config.sections import (
    add_run_sections,
    data_section,
    objective_section,
    optim_section,
    shrink_to_tiny,
)
from cmjax.importers.cm_cifar10 import PAPER_MODEL as NCSNPP_CM_CIFAR10
from cmjax.models.ddpmpp import DDPMPP_CIFAR10

BATCH = 512
EMA_HALF_LIFE_IMAGES = 500_000
TOTAL_IMAGES = 200_000_000
LR_RAMP_IMAGES = 10_000_000


def ema_rate_from_half_life(half_life_images: float, batch: int) -> float:
    """EDM's per-step EMA decay 0.5 ** (batch / half-life in images)."""
    return 0.5 ** (batch / half_life_images)


def get_config(variant: str = "") -> config_dict.ConfigDict:
    if variant not in ("", "ncsnpp", "tiny"):
        raise ValueError(f"unknown cifar10_edm variant {variant!r}; use '', 'ncsnpp' or 'tiny'")
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = data_section("cifar10", (32, 32, 3), num_classes=0, random_flip=False)
    config.model = config_dict.ConfigDict(dict(DDPMPP_CIFAR10, dropout=0.13))
    config.objective = objective_section("edm")
    config.optim = optim_section(
        name="adam", learning_rate=1e-3, warmup_steps=LR_RAMP_IMAGES // BATCH
    )
    config.training = config_dict.ConfigDict(
        dict(
            total_steps=TOTAL_IMAGES // BATCH,
            batch_size=BATCH,
            ema_rates=(ema_rate_from_half_life(EMA_HALF_LIFE_IMAGES, BATCH),),
        )
    )
    add_run_sections(config)  # Heun, 18 steps
    if variant == "ncsnpp":
        config.model = config_dict.ConfigDict(dict(NCSNPP_CM_CIFAR10, dropout=0.13))
        config.data.random_flip = True  # jcm's default
        config.training.total_steps = 400_000
    if variant == "tiny":
        # The same tiny network as cifar10_ect:tiny, so init_from fits between them.
        shrink_to_tiny(config, model_channels=16, channel_mult=(1, 2), num_blocks=1)
        config.optim.warmup_steps = 5
    return config
