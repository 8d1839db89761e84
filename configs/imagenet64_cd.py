"""Consistency distillation on class-conditional ImageNet 64 (Song et al. 2023): FID 6.20
(1 step), 4.70 (2 steps) with LPIPS; the official PyTorch code's (openai/consistency_models)
``cd_imagenet64_lpips`` launch.

The student is the CM ADM (192 channels, (1, 2, 3, 4), 3 blocks, attention at 32/16/8 with 64
channels per head, scale-shift norm, c_noise = 1000 ln(sigma) / 4, dropout 0), started from
the teacher: ``cmjax-import --source=edm_imagenet64_ema.pt --workdir=TEACHER`` (the published
EDM teacher, imported as an ``edm`` run), then ``--config.objective.teacher=TEACHER``. N = 40
Karras points, Heun, a target network at mu = 0.95, LPIPS as piq's
``LPIPS(replace_pooling=True)`` (average pooling in VGG) after a bilinear resize to 224;
RAdam lr 8e-6, no warmup, batch 2048, 600k iterations; EMAs 0.9999432189950708 (the published
checkpoints' and the one sampled and evaluated: it comes first), 0.999, 0.9999. Two-step
sampling through T_22 of the 40-point grid (``--ts 0,22,39``): sigma 1.3824.

Not reproduced: fp16 mixed precision (``--use_fp16``; set ``config.model.dtype`` to bfloat16
for a similar saving). LPIPS weight files as configs/cifar10_cd.py.

Variants: "" (the LPIPS recipe), "l2" (CD-L2), "tiny" (the l2 recipe at tiny width and
budget, for tests).
"""

from ml_collections import config_dict

from cmjax.config.sections import (
    add_run_sections,
    data_section,
    objective_section,
    optim_section,
    shrink_to_tiny,
)
from cmjax.importers.cm_imagenet64 import PAPER_MODEL as CM_ADM
from cmjax.importers.cm_imagenet64 import TWO_STEP_SIGMA_CD

EMA_RATES = (0.9999432189950708, 0.999, 0.9999)


def get_config(variant: str = "") -> config_dict.ConfigDict:
    if variant not in ("", "l2", "tiny"):
        raise ValueError(f"unknown imagenet64_cd variant {variant!r}; use '', 'l2' or 'tiny'")
    config = config_dict.ConfigDict()
    config.seed = 0
    # name "imagenet64", or "prepared" (ADM preprocessing) with path=DIR (configs/imagenet64_ict.py)
    config.data = data_section("imagenet64", (64, 64, 3), num_classes=1000, random_flip=True)
    # The published CD models' ADM (scale-shift norm, dropout 0), as the importer builds it.
    config.model = config_dict.ConfigDict(dict(CM_ADM))
    config.objective = objective_section(
        "cd",
        num_scales=40,
        distance="lpips" if variant == "" else "l2",
        lpips_pool="avg",
        target_ema=0.95,
        weighting="uniform",
    )
    config.optim = optim_section(name="radam", learning_rate=8e-6, eps=1e-8)
    config.training = config_dict.ConfigDict(
        dict(total_steps=600_000, batch_size=2048, ema_rates=EMA_RATES)
    )
    add_run_sections(config, sampling=dict(two_step_sigma=TWO_STEP_SIGMA_CD))
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
    return config
