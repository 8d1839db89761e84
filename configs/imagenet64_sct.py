"""sCT on class-conditional ImageNet 64 (Lu & Song 2024; sCT-XL: FID 2.04 / 1.48).

ADM at iCT's ImageNet 64 widths (192 channels; the paper's XL widths are larger and not
reproduced here) with AdaGN and the paper's adaptive double normalization, c_noise(t) = t
through a positional embedding, dropout 0.45 at resolutions <= 16 only, P_mean/P_std
(-1.0, 1.6), batch 2048, RAdam lr 1e-4 betas (0.9, 0.99), 400k iterations, EMA half-life
0.5 M images (as CIFAR-10; the paper's ImageNet EMA is not restated here). Starts from a
TrigFlow run of the same network (``--config.init_from``; its diffusion used (-0.8, 1.6)).

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

BATCH = 2048


def get_config(variant: str = "") -> config_dict.ConfigDict:
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown imagenet64_sct variant {variant!r}; use '' or 'tiny'")
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = data_section("imagenet64", (64, 64, 3), num_classes=1000, random_flip=True)
    config.model = config_dict.ConfigDict(
        dict(
            name="adm",
            model_channels=192,
            channel_mult=(1, 2, 3, 4),
            num_res_blocks=3,
            attn_resolutions=(32, 16, 8),
            num_head_channels=64,
            dropout=0.45,
            dropout_max_resolution=16,
            use_scale_shift_norm=True,
            adaptive_double_norm=True,
            num_classes=1000,
            norm_groups=32,
            dtype="float32",
            time_embedding="positional",
            noise_cond_scale=1.0,
        )
    )
    config.objective = objective_section("sct", p_mean=-1.0, p_std=1.6, warmup_steps=10_000)
    config.optim = optim_section(learning_rate=1e-4, b1=0.9, b2=0.99)
    config.training = config_dict.ConfigDict(
        dict(
            total_steps=400_000,
            batch_size=BATCH,
            ema_rates=(ema_rate_for_half_life(500_000, BATCH),),
        )
    )
    config.init_from = ""
    add_run_sections(config)
    if variant == "tiny":
        shrink_to_tiny(
            config,
            model_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(32,),
            num_head_channels=8,
            norm_groups=8,
        )
        config.objective.warmup_steps = 20
    return config
