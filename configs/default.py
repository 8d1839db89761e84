"""The embedded default: iCT on scikit-learn's 8x8 handwritten digits (no download).

Class-conditional, a small UNet (16 channels), 2,500 steps at batch 128 with EMA 0.99: trains
on 2 CPU cores in minutes (retuned for the digits proxy per CPU-second in issue 17; see
benchmarks/RESULTS.md). Variant: comma-separated tokens, ``tiny`` (a few steps, for tests)
and/or an objective (``ict`` (default), ``edm``, ...), e.g. ``configs/default.py:edm`` or
``configs/default.py:tiny,edm``.
"""

from ml_collections import config_dict

from cmjax.config_defaults import (
    add_run_sections,
    objective_section,
    optim_section,
    parse_variant,
)
from cmjax.data.pipeline import data_source_keys

# Per-objective settings on the digits: objective overrides and the sampling section.
OBJECTIVE_SETTINGS = {
    "ict": dict(objective={}, sampling=dict(two_step_sigma=0.821)),
    "edm": dict(objective={}, sampling=dict(num_steps=18, solver="heun")),
    # ECT: stage length d = 500 steps, 5 stages over the 2,500-step digits run.
    "ect": dict(objective=dict(d=500), sampling=dict(two_step_sigma=0.821)),
    # TrigFlow / sCT / sCD with a positional time embedding of c_noise(t) = t; sCD needs
    # --config.objective.teacher=<a default:trigflow work directory>.
    "trigflow": dict(
        objective={}, sampling=dict(num_steps=50), model=dict(time_embedding="positional")
    ),
    "sct": dict(
        objective=dict(warmup_steps=500),
        sampling=dict(two_step_t=1.1),
        model=dict(time_embedding="positional"),
    ),
    "scd": dict(
        objective=dict(warmup_steps=500),
        sampling=dict(two_step_t=1.1),
        model=dict(time_embedding="positional"),
    ),
    # MeanFlow's network takes h = t - r as a second time input (model overrides).
    "meanflow": dict(
        objective={}, sampling=dict(two_step_time=0.5), model=dict(second_time_input=True)
    ),
}


def get_config(variant: str = "") -> config_dict.ConfigDict:
    size, objective = parse_variant(variant, ("tiny",), "", OBJECTIVE_SETTINGS)
    settings = OBJECTIVE_SETTINGS[objective]
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = config_dict.ConfigDict(
        dict(
            name="digits", shape=(8, 8, 1), num_classes=10, random_flip=False, **data_source_keys()
        )
    )
    config.model = config_dict.ConfigDict(
        dict(
            name="unet_small",
            # 16, not 32: a step costs 0.45x, and with EMA 0.99 2,500 steps beat the old
            # 32-channel, 3,000-step, EMA 0.999 default's proxy (benchmarks/RESULTS.md).
            channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            num_fourier=32,
            fourier_scale=1.0,
            dropout=0.1,
            num_classes=10,
            noise_cond_scale=1.0,
        )
    )
    config.model.update(settings.get("model", {}))
    config.objective = objective_section(objective, **settings["objective"])
    config.optim = optim_section(learning_rate=1e-3)
    config.training = config_dict.ConfigDict(
        dict(
            total_steps=2500,
            batch_size=128,
            # Half-life 69 steps: 0.999 (693) still averaged in the early, poor weights at
            # the end of a run this short (5% of the initial ones at step 3,000).
            ema_rates=(0.99,),
        )
    )
    # The digits FD proxy (not FID; cmjax/evaluation/digits_proxy.py) of 1,000 1- and 2-step
    # samples, at the end of training (the loop also evaluates at the last step).
    add_run_sections(
        config,
        sampling=settings["sampling"],
        checkpoint_every=1000,
        log_every=200,
        sample_every=500,
        num_samples=100,
        eval_every=2500,
        eval_samples=1000,
    )
    if size == "tiny":
        config.model.update(channels=8)
        config.training.update(
            total_steps=6, batch_size=16, log_every=2, sample_every=6, num_samples=16
        )
        config.checkpoint.every_steps = 3
        config.eval.every_steps = 0
    return config
