"""Consistency distillation on CIFAR-10 (Song et al. 2023): FID 3.55 (1 step), 2.93 (2 steps)
with LPIPS; the official JAX code's ``configs/cifar10_ve_cd.py``.

The student is jcm's NCSN++ (nf 128, (2, 2, 2), 4 blocks, attention at 16x16, Fourier scale
16, c_noise = ln(sigma) / 4, dropout 0), started from the teacher's weights: an EDM run of the
same network, ``configs/cifar10_edm.py:ncsnpp`` (jcm's ``cifar10_k_ve`` teacher), passed as
``--config.objective.teacher=<its work directory>``. N = 18 Karras points, one Heun step of
the teacher, mu = 0 (the target is the online network under stop-gradient), uniform
weighting, LPIPS on both images resized to 224 x 224; RAdam lr 4e-4 (eps 1e-8) warmed up over
10 M images, no clipping, batch 512, 800k iterations, EMA 0.9999.

LPIPS needs two weight files the user supplies (cmjax downloads nothing):
``--config.objective.lpips_vgg=vgg16-397923af.pth`` (torchvision's VGG16) and
``--config.objective.lpips_lin=vgg.pth`` (the lpips package's ``lpips/weights/v0.1/vgg.pth``).

Variants: "" (the LPIPS recipe), "l2" (per-example mean squared distance, lr 4e-4 as jcm's
config), "l1" (lr 2e-4), "tiny" (the l2 recipe at tiny width and budget, for tests).
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

BATCH = 512


def get_config(variant: str = "") -> config_dict.ConfigDict:
    if variant not in ("", "l2", "l1", "tiny"):
        raise ValueError(f"unknown cifar10_cd variant {variant!r}; use '', 'l2', 'l1' or 'tiny'")
    distance = "lpips" if variant == "" else ("l1" if variant == "l1" else "l2")
    config = config_dict.ConfigDict()
    config.seed = 0
    config.data = data_section("cifar10", (32, 32, 3), num_classes=0, random_flip=True)
    config.model = config_dict.ConfigDict(dict(NCSNPP_CM_CIFAR10, dropout=0.0))
    config.objective = objective_section(
        "cd", num_scales=18, distance=distance, target_ema=0.0, weighting="uniform"
    )
    config.optim = optim_section(
        name="radam",
        learning_rate=2e-4 if distance == "l1" else 4e-4,
        eps=1e-8,
        warmup_steps=10_000_000 // BATCH,
    )
    config.training = config_dict.ConfigDict(
        dict(total_steps=800_000, batch_size=BATCH, ema_rates=(0.9999,))
    )
    add_run_sections(config)  # 1 step at 80, 2 steps through 0.821
    if variant == "tiny":
        shrink_to_tiny(config, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))
        config.optim.warmup_steps = 5
    return config
