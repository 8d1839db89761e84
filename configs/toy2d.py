"""A procedural 2-D distribution with a small MLP: trains on a laptop CPU in seconds.

Variant: comma-separated tokens, each a distribution (``gaussian_mixture`` (default),
``checkerboard``, ``two_moons``) or an objective (``ict`` (default), ``edm``, ...), e.g.
``configs/toy2d.py:two_moons,edm``.
"""

from ml_collections import config_dict

from cmjax.config_defaults import (
    add_run_sections,
    objective_section,
    optim_section,
    parse_variant,
)
from cmjax.data.pipeline import data_source_keys

# Per-objective settings on the toys: objective overrides and the sampling section.
OBJECTIVE_SETTINGS = {
    # Two-step intermediate sigma 2.0: the best of 0.08 ... 2.0 on these toys in a sweep
    # (0.821 is CIFAR-10's); see benchmarks/quality_toy.py.
    "ict": dict(objective={}, sampling=dict(two_step_sigma=2.0)),
    "edm": dict(objective={}, sampling=dict(num_steps=18, solver="heun")),
    # ECT: stage length d = 250 steps, so the 2,000-step toy run goes through 8 stages
    # (the paper's 400k CIFAR-10 iterations go through 16 of 25k); two-step sigma as iCT's.
    "ect": dict(objective=dict(d=250), sampling=dict(two_step_sigma=2.0)),
    # TrigFlow / sCT / sCD: c_noise(t) = t through a positional (low-frequency) embedding.
    # Tangent warmup over 200 steps (the paper's 10k is for 400k-step image runs); sCD needs
    # --config.objective.teacher=<a toy2d:...,trigflow work directory>.
    "trigflow": dict(
        objective={}, sampling=dict(num_steps=50), model=dict(time_embedding="positional")
    ),
    "sct": dict(
        objective=dict(warmup_steps=200),
        sampling=dict(two_step_t=1.1),
        model=dict(time_embedding="positional"),
    ),
    "scd": dict(
        objective=dict(warmup_steps=200),
        sampling=dict(two_step_t=1.1),
        model=dict(time_embedding="positional"),
    ),
    # MeanFlow's network takes h = t - r as a second time input (model overrides).
    "meanflow": dict(
        objective={}, sampling=dict(two_step_time=0.5), model=dict(second_time_input=True)
    ),
}


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    from cmjax.data.toy2d import DISTRIBUTIONS

    distribution, objective = parse_variant(
        arg, tuple(DISTRIBUTIONS), "gaussian_mixture", OBJECTIVE_SETTINGS
    )
    settings = OBJECTIVE_SETTINGS[objective]
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = config_dict.ConfigDict(
        dict(
            name="toy2d",
            distribution=distribution,
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
    config.model.update(settings.get("model", {}))
    config.objective = objective_section(objective, **settings["objective"])
    config.optim = optim_section(learning_rate=1e-3)  # small MLP: a larger step is stable
    config.training = config_dict.ConfigDict(
        dict(total_steps=2000, batch_size=512, ema_rates=(0.995,))
    )
    add_run_sections(
        config,
        sampling=settings["sampling"],
        checkpoint_every=500,
        log_every=100,
        sample_every=0,
        eval_every=500,
        eval_samples=2000,
    )
    return config
