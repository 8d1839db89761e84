"""iCT on a procedural 2-D distribution with a small MLP: trains on a laptop CPU in seconds.

Variants: ``gaussian_mixture`` (default), ``checkerboard``, ``two_moons``.
"""

from ml_collections import config_dict

from cmjax.config_defaults import add_run_sections, ict_section, optim_section
from cmjax.data.pipeline import data_source_keys


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    from cmjax.data.toy2d import DISTRIBUTIONS

    if arg and arg not in DISTRIBUTIONS:
        raise ValueError(f"unknown toy2d variant {arg!r}; use one of {sorted(DISTRIBUTIONS)}")
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = config_dict.ConfigDict(
        dict(
            name="toy2d",
            distribution=arg or "gaussian_mixture",
            shape=(2,),
            num_classes=0,
            random_flip=False,
            **data_source_keys(),
        )
    )
    config.model = config_dict.ConfigDict(
        dict(
            name="mlp",
            hidden=128,
            depth=3,
            num_fourier=32,
            fourier_scale=1.0,
            dropout=0.0,
            num_classes=0,
            noise_cond_scale=1.0,
        )
    )
    config.ict = ict_section()
    config.optim = optim_section(learning_rate=1e-3)  # small MLP: a larger step is stable
    config.training = config_dict.ConfigDict(
        dict(total_steps=2000, batch_size=512, ema_rates=(0.995,))
    )
    # Two-step intermediate sigma 2.0: the best of 0.08 ... 2.0 on these toys in a sweep
    # (0.821 is CIFAR-10's); see benchmarks/quality_toy.py.
    add_run_sections(
        config,
        two_step_sigma=2.0,
        checkpoint_every=500,
        log_every=100,
        sample_every=0,
        eval_every=500,
        eval_samples=2000,
    )
    return config
