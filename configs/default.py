"""The embedded default: iCT on scikit-learn's 8x8 handwritten digits (no download).

Class-conditional, a small UNet, trains on 2 CPU cores in minutes. Variants: "" and "tiny"
(a few steps, for tests).
"""

from ml_collections import config_dict

from cmjax.config_defaults import add_run_sections, ict_section, optim_section


def get_config(variant: str = "") -> config_dict.ConfigDict:
    if variant not in ("", "tiny"):
        raise ValueError(f"unknown default variant {variant!r}; use '' or 'tiny'")
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = config_dict.ConfigDict(
        dict(name="digits", shape=(8, 8, 1), num_classes=10, random_flip=False)
    )
    config.model = config_dict.ConfigDict(
        dict(
            name="unet_small",
            channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            num_fourier=32,
            fourier_scale=1.0,
            dropout=0.1,
            num_classes=10,
            noise_cond_scale=1.0,
        )
    )
    config.ict = ict_section()
    config.optim = optim_section(learning_rate=1e-3)
    config.training = config_dict.ConfigDict(
        dict(
            total_steps=3000,
            batch_size=128,
            ema_rates=(0.999,),
        )
    )
    # The digits FD proxy (not FID; cmjax/evaluation/digits_proxy.py) of 1,000 1- and 2-step
    # samples, at the end of training (the loop also evaluates at the last step).
    add_run_sections(
        config,
        checkpoint_every=1000,
        log_every=200,
        sample_every=1000,
        num_samples=100,
        eval_every=3000,
        eval_samples=1000,
    )
    if variant == "tiny":
        config.model.update(channels=8)
        config.training.update(
            total_steps=6, batch_size=16, log_every=2, sample_every=6, num_samples=16
        )
        config.checkpoint.every_steps = 3
        config.eval.every_steps = 0
    return config
