"""The official Consistency Models ImageNet 64 checkpoints (openai/consistency_models, PyTorch).

Files such as ``cd_imagenet64_l2.pt``, ``cd_imagenet64_lpips.pt``, ``ct_imagenet64.pt`` (and the
teacher ``edm_imagenet64_ema.pt``) are ``torch.save(model.state_dict())`` of the ADM UNet in
``cm/unet.py``, read here without torch (:mod:`cmjax.importers.torch_pickle`). The published
models use scale-shift norm (AdaGN); iCT-style ADMs without it import too.

cmjax's ``adm`` is that UNet (GroupNorm32 with eps 1e-5, resblock up/down sampling, q/k/v
split before heads as the flash/"b (three h d) s" layout). The reference's denoiser feeds
c_noise = 1000 ln(sigma) / 4 and uses the consistency scalings with sigma_min = 0.002, so the
written config has objective ``ict`` and ``noise_cond_scale`` 1000. The CD teacher
``edm_imagenet64_ema.pt`` is an EDM denoiser (EDM's scalings, no sigma_min offset; the same
c_noise), so a file whose name starts with ``edm`` is written as objective ``edm`` (the
teacher ``configs/imagenet64_cd.py`` reads); ``objective=`` says which when the name does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cmjax.importers import torch_pickle
from cmjax.importers.common import (
    CheckpointImportError,
    Target,
    abstract_network_params,
    make_config,
    map_parameters,
    torch_conv,
    torch_conv1x1_as_dense,
    torch_linear,
)

# scripts/launch.sh: the published ImageNet 64 models (CD/CT, dropout 0 when sampling).
PAPER_MODEL = dict(
    name="adm",
    model_channels=192,
    channel_mult=(1, 2, 3, 4),
    num_res_blocks=3,
    attn_resolutions=(32, 16, 8),
    num_head_channels=64,
    dropout=0.0,
    use_scale_shift_norm=True,
    num_classes=1000,
    norm_groups=32,
    dtype="float32",
    noise_cond_scale=1000.0,
)

# The 2-step sampler of launch.sh for the CD models: --ts 0,22,39 of 40 Karras steps; the
# second noise level is sigma_22 = 1.3824 (CT: --ts 0,106,200 of 201 -> 1.9128).
TWO_STEP_SIGMA_CD = 1.3823679566485092

_SECTIONS = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}

_RES = {
    "in_layers.0": ("GroupNorm_0", "norm"),
    "in_layers.2": ("Conv_0", "conv"),
    "emb_layers.1": ("Dense_0", "linear"),
    "out_layers.0": ("GroupNorm_1", "norm"),
    "out_layers.3": ("Conv_1", "conv"),
    "skip_connection": ("Conv_2", "conv"),
}
_ATTN = {
    "norm": ("GroupNorm_0", "norm"),
    "qkv": ("Dense_0", "conv1x1"),
    "proj_out": ("Dense_1", "conv1x1"),
}
_TOP = {
    "time_embed.0": ("Dense_0", "linear"),
    "time_embed.2": ("Dense_1", "linear"),
    "label_emb": ("Embed_0", "embed"),
    "input_blocks.0.0": ("Conv_0", "conv"),
    "out.0": ("GroupNorm_0", "norm"),
    "out.2": ("Conv_1", "conv"),
}


def _leaf(kind: str, torch_leaf: str) -> tuple[str | None, Any]:
    """(flax leaf name, transform) of a torch ``weight``/``bias`` for a layer kind."""
    if torch_leaf == "bias":
        return "bias", None
    if torch_leaf != "weight":
        return None, None
    return {
        "norm": ("scale", None),
        "conv": ("kernel", torch_conv),
        "linear": ("kernel", torch_linear),
        "conv1x1": ("kernel", torch_conv1x1_as_dense),
        "embed": ("embedding", None),
    }[kind]


def _module_prefixes(names: list[str]) -> list[str]:
    """The blocks' module prefixes ("input_blocks.3.1", "middle_block.0"), in network order."""
    keys = set()
    for n in names:
        if m := re.match(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.", n):
            if m.group(1) == "input_blocks" and m.group(2) == "0":
                continue  # the input conv
            keys.add((_SECTIONS[m.group(1)], int(m.group(2)), int(m.group(3)), m.group(0)[:-1]))
        elif m := re.match(r"middle_block\.(\d+)\.", n):
            keys.add((1, int(m.group(1)), 0, m.group(0)[:-1]))
    return [prefix for *_, prefix in sorted(keys)]


def make_rename(names: list[str]):
    """A rename function for this state dict: ResBlocks and AttentionBlocks numbered in order."""
    table: dict[str, tuple[str, dict]] = {}
    n_res = n_attn = 0
    for prefix in _module_prefixes(names):
        if any(n.startswith(prefix + ".in_layers.") for n in names):
            table[prefix] = (f"ADMResBlock_{n_res}", _RES)
            n_res += 1
        elif any(n.startswith(prefix + ".qkv.") for n in names):
            table[prefix] = (f"ADMAttention_{n_attn}", _ATTN)
            n_attn += 1
        # anything else stays unmapped and is reported by map_parameters

    def rename(name: str) -> Target | None:
        module, _, leaf = name.rpartition(".")
        if module in _TOP:
            flax_module, kind = _TOP[module]
            flax_leaf, fn = _leaf(kind, leaf)
            return Target(f"{flax_module}/{flax_leaf}", fn) if flax_leaf else None
        for prefix, (block, layers) in table.items():
            if module.startswith(prefix + "."):
                layer = module[len(prefix) + 1 :]
                if layer not in layers:
                    return None
                flax_module, kind = layers[layer]
                flax_leaf, fn = _leaf(kind, leaf)
                return Target(f"{block}/{flax_module}/{flax_leaf}", fn) if flax_leaf else None
        return None

    return rename


def implied_settings(
    sd: Mapping[str, np.ndarray], image_size: int, num_head_channels: int
) -> dict[str, Any]:
    """The ADM settings the state dict's names and shapes imply."""
    names = list(sd)
    if "input_blocks.0.0.weight" not in sd:
        raise CheckpointImportError(
            "no input_blocks.0.0.weight: not an ADM UNet state dict (cm/unet.py); "
            f"first names: {names[:3]}"
        )
    mc = int(sd["input_blocks.0.0.weight"].shape[0])
    n_out = len({m.group(1) for n in names if (m := re.match(r"output_blocks\.(\d+)\.", n))})
    # Up-sampling ResBlocks: a second ResBlock inside one output block.
    ups = len(
        {n.split(".")[1] for n in names if re.match(r"output_blocks\.\d+\.[12]\.in_layers\.", n)}
    )
    levels = ups + 1
    per_level, rem = divmod(n_out, levels)
    if rem or per_level < 2:
        raise CheckpointImportError(
            f"{n_out} output blocks over {levels} resolutions is not an ADM layout"
        )
    res = per_level - 1
    mult, attn = [], []
    for level in range(levels):
        first = f"input_blocks.{1 + level * per_level}.0.out_layers.3.weight"
        if first not in sd:
            raise CheckpointImportError(f"no {first}: not an ADM UNet state dict (cm/unet.py)")
        mult.append(int(sd[first].shape[0]) // mc)
        if f"input_blocks.{1 + level * per_level}.1.qkv.weight" in sd:
            attn.append(image_size // 2**level)
    emb = sd["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    out_ch = sd["input_blocks.1.0.out_layers.3.weight"].shape[0]
    settings = dict(PAPER_MODEL)
    settings.update(
        model_channels=mc,
        channel_mult=tuple(mult),
        num_res_blocks=res,
        attn_resolutions=tuple(attn),
        num_head_channels=num_head_channels,
        use_scale_shift_norm=bool(emb == 2 * out_ch),
        num_classes=int(sd["label_emb.weight"].shape[0]) if "label_emb.weight" in sd else 0,
    )
    return settings


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    obj = torch_pickle.load(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise CheckpointImportError(
            f"{path} does not hold a state dict of tensors (got {type(obj).__name__}); expected "
            "a consistency_models file such as cd_imagenet64_l2.pt"
        )
    return obj


def import_cm_imagenet64(
    path: str | Path,
    *,
    image_size: int = 64,
    num_head_channels: int = 64,
    objective: str | None = None,
    **unused: Any,
):
    """(config, network params) for a consistency_models ADM state dict (.pt).

    ``num_head_channels`` (64 in the published models) is not recorded in the weights.
    ``objective``: ``"ict"`` (a consistency model: cd_*, ct_*) or ``"edm"`` (the teacher
    edm_imagenet64_ema.pt); None: ``"edm"`` when the file name starts with "edm".
    """
    if unused:
        raise CheckpointImportError(f"options {sorted(unused)} do not apply to cm_imagenet64")
    if objective is None:
        objective = "edm" if Path(path).name.lower().startswith("edm") else "ict"
    if objective not in ("ict", "edm"):
        raise CheckpointImportError(
            f"--objective={objective} does not apply to cm_imagenet64; use ict or edm"
        )
    sd = read_state_dict(path)
    settings = implied_settings(sd, image_size, num_head_channels)
    shape = (image_size, image_size, 3)
    abstract = abstract_network_params(settings, shape, settings["num_classes"])
    params = map_parameters(
        sd,
        make_rename(list(sd)),
        abstract,
        what=f"{path} (consistency_models ADM)",
        settings={**settings, "image_size": image_size},
    )
    config = make_config(
        data_name="imagenet64",
        shape=shape,
        num_classes=settings["num_classes"],
        model=settings,
        objective=objective,
        sampling=dict(two_step_sigma=TWO_STEP_SIGMA_CD) if objective == "ict" else None,
        ema_rates=(0.9999432189950708,),
    )
    return config, params
