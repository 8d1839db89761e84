"""Config sections shared by the files in configs/: the iCT constants and the optimizer."""

from __future__ import annotations

from ml_collections import config_dict

from cmjax import ict


def ict_section(**overrides) -> config_dict.ConfigDict:
    """iCT noise schedule, curriculum, lognormal sampling and loss (DESIGN.md §1)."""
    section = dict(
        sigma_min=ict.SIGMA_MIN,
        sigma_max=ict.SIGMA_MAX,
        rho=ict.RHO,
        sigma_data=ict.SIGMA_DATA,
        s0=ict.S0,
        s1=ict.S1,
        p_mean=ict.P_MEAN,
        p_std=ict.P_STD,
        loss="pseudo_huber",
        loss_c=config_dict.placeholder(float),  # None: 0.00054 * sqrt(dim)
        weighting="ict",
    )
    section.update(overrides)
    return config_dict.ConfigDict(section)


def optim_section(**overrides) -> config_dict.ConfigDict:
    """RAdam, lr 1e-4, no warmup, no clipping (iCT)."""
    section = dict(
        name="radam",
        learning_rate=1e-4,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        warmup_steps=0,
        grad_clip_norm=0.0,
    )
    section.update(overrides)
    return config_dict.ConfigDict(section)


def add_run_sections(
    config: config_dict.ConfigDict,
    two_step_sigma: float = 0.821,
    checkpoint_every: int = 10_000,
    log_every: int = 100,
    sample_every: int = 10_000,
    num_samples: int = 64,
    eval_every: int = 0,
    eval_samples: int = 50_000,
) -> config_dict.ConfigDict:
    """Add the logging, sampling, checkpoint and mesh settings every runnable config has."""
    config.training.update(log_every=log_every, sample_every=sample_every, num_samples=num_samples)
    config.checkpoint = config_dict.ConfigDict(
        dict(every_steps=checkpoint_every, keep=3, milestone_every=0, async_save=True)
    )
    config.mesh = config_dict.ConfigDict(dict(fsdp=1, dcn_data=1, multiprocess=False))
    config.sampling = config_dict.ConfigDict(dict(two_step_sigma=two_step_sigma))
    # FID needs inception_path (see cmjax/evaluation/inception.py) and ref_stats (mu/sigma npz).
    config.eval = config_dict.ConfigDict(
        dict(
            every_steps=eval_every,
            num_samples=eval_samples,
            batch_size=500,
            inception_path="",
            ref_stats="",
        )
    )
    return config


def shrink_to_tiny(config: config_dict.ConfigDict, **model: object) -> config_dict.ConfigDict:
    """The ``tiny`` variant of a paper config: ``model`` widths, a CPU-sized run budget."""
    config.model.update(model)
    config.training.update(
        total_steps=40,
        batch_size=8,
        ema_rates=(0.9,),
        log_every=10,
        sample_every=40,
        num_samples=16,
    )
    config.checkpoint.every_steps = 20
    return config
