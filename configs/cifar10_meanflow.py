"""MeanFlow on CIFAR-10 with DDPM++ (Geng et al. 2025): FID 2.92 with 1 step.

The paper's CIFAR-10 recipe (its Table/appendix and the official PyTorch ``cifar10_v0.sh``):
EDM's DDPM++ U-Net (~55M parameters) with a second time input h = t - r, 256-wide
positional time embeddings (``channel_mult_noise=2``) and [1, 3, 3, 1] resampling, dropout
0.2; Adam lr 6e-4 (betas 0.9, 0.999) after a linear warmup of 200 epochs (~10k steps),
batch 1024, 800k iterations, EMA 0.9999; t, r ~ LN(-2, 2), r != t on 75% of rows,
adaptive weight p = 0.75, c = 1e-3. Departure: EDM's augmentation pipeline (the official
code's ``--use_edm_aug``) is not implemented; horizontal flips only.

Variants: "" (the paper recipe), "tiny" (same code, tiny widths and budget, for tests).
"""

from ml_collections import config_dict

from cmjax.config.sections import (
    add_run_sections,
    data_section,
    objective_section,
    optim_section,
    shrink_to_tiny,
)


def get_config(variant: str = "") -> config_dict.ConfigDict:
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown cifar10_meanflow variant {variant!r}; use '' or 'tiny'")
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = data_section("cifar10", (32, 32, 3), num_classes=0, random_flip=True)
    config.model = config_dict.ConfigDict(
        dict(
            name="ddpmpp",
            model_channels=128,
            channel_mult=(2, 2, 2),
            channel_mult_noise=2,
            num_blocks=4,
            attn_resolutions=(16,),
            dropout=0.2,
            resample_filter=(1, 3, 3, 1),
            time_embedding="positional",
            second_time_input=True,
            num_classes=0,
            dtype="float32",
            noise_cond_scale=1.0,  # t and h enter raw, in [0, 1], as in the official code
        )
    )
    config.objective = objective_section("meanflow")
    config.optim = optim_section(name="adam", learning_rate=6e-4, warmup_steps=10_000)
    config.training = config_dict.ConfigDict(
        dict(total_steps=800_000, batch_size=1024, ema_rates=(0.9999,))
    )
    add_run_sections(config)
    if variant == "tiny":
        shrink_to_tiny(
            config, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(16,)
        )
    return config
