"""iCT on class-conditional ImageNet 64x64 with ADM: FID 4.02 (1 step), 3.20 (2 steps).

Variants: "" (the paper recipe), "deep" (twice the res blocks: 6 per resolution, iCT-deep:
3.25 / 2.77, the paper's headline numbers),
"tiny" (same code, tiny widths and budget, for tests and CPU demos).

Data: ``imagenet64`` reads TFDS ``imagenet_resized/64x64`` (quick to get, but whole images
squeezed to 64x64 without cropping, unlike the FID reference batch). The data the ADM / CM
reference batch was made from (ADM center crop, box + bicubic) is the prepared folder of
``cmjax-prepare-imagenet --src=.../train --out=DIR``, selected with
``--config.data.name=prepared --config.data.path=DIR``.
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
    if variant not in ("", "deep", "tiny"):
        raise ValueError(f"unknown imagenet64_ict variant {variant!r}; use '', 'deep' or 'tiny'")
    config = config_dict.ConfigDict()
    config.seed = 0
    # name "imagenet64", or "prepared" (ADM preprocessing) with path=DIR
    config.data = data_section("imagenet64", (64, 64, 3), num_classes=1000, random_flip=True)
    config.model = config_dict.ConfigDict(
        dict(
            name="adm",
            model_channels=192,
            channel_mult=(1, 2, 3, 4),
            num_res_blocks=3,
            attn_resolutions=(32, 16, 8),
            num_head_channels=64,
            dropout=0.2,
            dropout_max_resolution=16,  # dropout only at 16x16 and below (simple diffusion)
            use_scale_shift_norm=False,
            num_classes=1000,
            norm_groups=32,
            dtype="float32",
            noise_cond_scale=1000.0,
        )
    )
    config.objective = objective_section("ict")
    config.optim = optim_section()
    config.training = config_dict.ConfigDict(
        dict(total_steps=800_000, batch_size=4096, ema_rates=(0.99997,))
    )
    add_run_sections(config, sampling=dict(two_step_sigma=1.526))
    if variant == "deep":
        config.model.num_res_blocks = 6
    elif variant == "tiny":
        shrink_to_tiny(
            config,
            model_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(32,),
            num_head_channels=8,
            norm_groups=8,
            dropout_max_resolution=32,  # the tiny net's low-resolution half (64 -> 32)
        )
    return config
