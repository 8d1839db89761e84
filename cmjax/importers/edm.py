"""EDM's network snapshots (NVlabs/edm ``.pkl``): DDPM++ (``SongUNet``) and ADM
(``DhariwalUNet``) under ``EDMPrecond``, e.g. ``edm-cifar10-32x32-uncond-vp.pkl`` and
``edm-imagenet-64x64-cond-adm.pkl``.

The pickle holds ``dict(ema=EDMPrecond, loss_fn, augment_pipe, dataset_kwargs)``; EDM's
persistent classes embed their Python source, which is never executed here:
:mod:`cmjax.importers.torch_pickle` turns every module into an inert object that only keeps its
pickled state (parameters, and the constructor arguments EDM records), from which the network
settings are read.

EDMPrecond is EDM's denoiser D = c_skip x + c_out F(c_in x, ln(sigma) / 4) = cmjax's ``edm``
objective with ``noise_cond_scale`` 1 (also for the ADM: EDM feeds ln(sigma) / 4 to its
positional embedding, not CM's 1000 ln(sigma) / 4). The written work directory samples with
Heun and is ready for ECT (``config.init_from``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cmjax.importers import torch_pickle
from cmjax.importers.common import (
    CheckpointImportError,
    Target,
    abstract_network_params,
    describe,
    make_config,
    map_parameters,
    torch_conv,
    torch_conv1x1_as_dense,
    torch_linear,
)
from cmjax.importers.torch_pickle import InertObject


def _class_name(obj: Any) -> str:
    if isinstance(obj, InertObject):
        return obj.meta["class_name"] if obj.meta else obj.cls_name.rpartition(".")[2]
    return type(obj).__name__


def module_state_dict(module: InertObject, prefix: str = "") -> dict[str, Any]:
    """torch's ``state_dict()`` of an inert module: parameters and persistent buffers."""
    state = module.state if isinstance(module.state, dict) else {}
    out: dict[str, Any] = {}
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, InertObject):
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def _children(module: InertObject) -> dict[str, Any]:
    return dict((module.state or {}).get("_modules") or {})


def _is_buffer(name: str) -> bool:
    return name.endswith(".resample_filter")


# --- DDPM++ (SongUNet) -> cmjax ddpmpp -----------------------------------------------------

_SONG_BLOCK_LAYERS = {
    "norm0": ("norm0", "norm"),
    "conv0": ("conv0", "conv"),
    "affine": ("affine", "linear"),
    "norm1": ("norm1", "norm"),
    "conv1": ("conv1", "conv"),
    "skip": ("skip", "conv"),
    "norm2": ("norm2", "norm"),
    "qkv": ("qkv", "conv"),
    "proj": ("proj", "conv"),
}

_LEAVES = {
    "norm": {"weight": ("scale", None), "bias": ("bias", None)},
    "conv": {"weight": ("kernel", torch_conv), "bias": ("bias", None)},
    "linear": {"weight": ("kernel", torch_linear), "bias": ("bias", None)},
    "conv1x1": {"weight": ("kernel", torch_conv1x1_as_dense), "bias": ("bias", None)},
}


def _leaf_target(path: str, kind: str, leaf: str, fn=None) -> Target | None:
    if leaf not in _LEAVES[kind]:
        return None
    name, transform = _LEAVES[kind][leaf]
    return Target(f"{path}/{name}", fn.get(leaf) if fn else transform)


def _block_order(net: InertObject) -> list[tuple[str, InertObject]]:
    """("enc.16x16_block0", module) of every UNetBlock in the network's order."""
    blocks = []
    for part in ("enc", "dec"):
        container = _children(net).get(part)
        if not isinstance(container, InertObject):
            raise CheckpointImportError(f"the EDM network has no {part!r} ModuleDict")
        for name, child in _children(container).items():
            if _class_name(child) == "UNetBlock":
                blocks.append((f"{part}.{name}", child))
    return blocks


def _songunet(net: InertObject, kw: Mapping[str, Any]):
    unsupported = {
        k: kw.get(k)
        for k, want in (
            ("embedding_type", "positional"),
            ("encoder_type", "standard"),
            ("decoder_type", "standard"),
        )
        if kw.get(k, want) != want
    }
    if unsupported:
        raise CheckpointImportError(
            f"EDM SongUNet with {describe(unsupported)} (EDM's NCSN++ / VE models) has no cmjax "
            "network; cmjax imports DDPM++ (positional, standard encoder/decoder)"
        )
    model = dict(
        name="ddpmpp",
        model_channels=int(kw.get("model_channels", 128)),
        channel_mult=tuple(kw.get("channel_mult", (1, 2, 2, 2))),
        channel_mult_emb=int(kw.get("channel_mult_emb", 4)),
        channel_mult_noise=int(kw.get("channel_mult_noise", 1)),
        num_blocks=int(kw.get("num_blocks", 4)),
        attn_resolutions=tuple(kw.get("attn_resolutions", (16,))),
        dropout=float(kw.get("dropout", 0.10)),
        label_dropout=float(kw.get("label_dropout", 0.0)),
        num_classes=int(kw.get("label_dim", 0)),
        augment_dim=int(kw.get("augment_dim", 0)),
        resample_filter=tuple(kw.get("resample_filter", (1, 1))),
        noise_cond_scale=1.0,
    )
    table = {prefix: f"SongUNetBlock_{i}" for i, (prefix, _) in enumerate(_block_order(net))}
    top = {
        "map_label": ("map_label", "linear"),
        "map_augment": ("map_augment", "linear"),
        "map_layer0": ("map_layer0", "linear"),
        "map_layer1": ("map_layer1", "linear"),
    }

    def rename(name: str) -> Target | None:
        module, _, leaf = name.rpartition(".")
        if module in top:
            return _leaf_target(top[module][0], top[module][1], leaf)
        part, _, rest = module.partition(".")
        if part == "enc" and rest.endswith("_conv") and "." not in rest:
            return _leaf_target("enc_conv", "conv", leaf)
        if part == "dec" and rest.endswith("_aux_norm"):
            return _leaf_target("out_norm", "norm", leaf)
        if part == "dec" and rest.endswith("_aux_conv"):
            return _leaf_target("out_conv", "conv", leaf)
        block, _, layer = module.rpartition(".")
        if block in table and layer in _SONG_BLOCK_LAYERS:
            flax_layer, kind = _SONG_BLOCK_LAYERS[layer]
            return _leaf_target(f"{table[block]}/{flax_layer}", kind, leaf)
        return None

    return model, rename


# --- ADM (DhariwalUNet) -> cmjax adm ---------------------------------------------------------


def _qkv_to_cmjax(heads: int):
    """EDM's qkv rows are (head, channel, q/k/v); cmjax's Dense columns (q/k/v, head, channel)."""

    def weight(w: np.ndarray) -> np.ndarray:
        c3, c_in = w.shape[:2]
        w = w.reshape(heads, c3 // (3 * heads), 3, c_in).transpose(2, 0, 1, 3)
        return np.transpose(w.reshape(c3, c_in))

    def bias(b: np.ndarray) -> np.ndarray:
        return b.reshape(heads, -1, 3).transpose(2, 0, 1).reshape(-1)

    return {"weight": weight, "bias": bias}


def _dhariwal(net: InertObject, kw: Mapping[str, Any]):
    if int(kw.get("augment_dim", 0)):
        raise CheckpointImportError(
            f"EDM DhariwalUNet with augment_dim={kw.get('augment_dim')}: cmjax's adm has no "
            "augmentation-label input"
        )
    blocks = _block_order(net)
    head_channels = {
        int(b.state["out_channels"]) // int(b.state["num_heads"])
        for _, b in blocks
        if b.state.get("num_heads")
    }
    if len(head_channels) > 1:
        raise CheckpointImportError(
            f"EDM DhariwalUNet with {sorted(head_channels)} channels per head in different "
            "blocks: cmjax's adm has one num_head_channels"
        )
    mc = int(kw.get("model_channels", 192))
    mult = tuple(kw.get("channel_mult", (1, 2, 3, 4)))
    model = dict(
        name="adm",
        model_channels=mc,
        channel_mult=mult,
        num_res_blocks=int(kw.get("num_blocks", 3)),
        attn_resolutions=tuple(kw.get("attn_resolutions", (32, 16, 8))),
        num_head_channels=head_channels.pop() if head_channels else 64,
        dropout=float(kw.get("dropout", 0.10)),
        use_scale_shift_norm=True,
        num_classes=int(kw.get("label_dim", 0)),
        # EDM's GroupNorm: min(32, channels // 4) groups = 32 at >= 128 channels; 0 asks cmjax
        # for that rule where narrower layers exist.
        norm_groups=32 if mc * min(mult) >= 128 else 0,
        noise_cond_scale=1.0,
    )
    table: dict[str, tuple[str, str | None, dict | None]] = {}
    n_attn = 0
    for i, (prefix, block) in enumerate(blocks):
        attn = None
        qkv = None
        if block.state.get("num_heads"):
            attn = f"ADMAttention_{n_attn}"
            qkv = _qkv_to_cmjax(int(block.state["num_heads"]))
            n_attn += 1
        table[prefix] = (f"ADMResBlock_{i}", attn, qkv)
    res_layers = {
        "norm0": ("GroupNorm_0", "norm"),
        "conv0": ("Conv_0", "conv"),
        "affine": ("Dense_0", "linear"),
        "norm1": ("GroupNorm_1", "norm"),
        "conv1": ("Conv_1", "conv"),
        "skip": ("Conv_2", "conv"),
    }
    attn_layers = {
        "norm2": ("GroupNorm_0", "norm"),
        "qkv": ("Dense_0", "conv1x1"),
        "proj": ("Dense_1", "conv1x1"),
    }
    top = {
        "map_layer0": ("Dense_0", "linear"),
        "map_layer1": ("Dense_1", "linear"),
        "out_norm": ("GroupNorm_0", "norm"),
        "out_conv": ("Conv_1", "conv"),
    }

    def rename(name: str) -> Target | None:
        module, _, leaf = name.rpartition(".")
        if module in top:
            return _leaf_target(top[module][0], top[module][1], leaf)
        if name == "map_label.weight":  # Linear(one-hot, bias=False) == an embedding table
            return Target("Embed_0/embedding", np.transpose)
        part, _, rest = module.partition(".")
        if part == "enc" and rest.endswith("_conv") and "." not in rest:
            return _leaf_target("Conv_0", "conv", leaf)
        block, _, layer = module.rpartition(".")
        if block not in table:
            return None
        res_name, attn_name, qkv = table[block]
        if layer in res_layers:
            return _leaf_target(f"{res_name}/{res_layers[layer][0]}", res_layers[layer][1], leaf)
        if attn_name and layer in attn_layers:
            flax_layer, kind = attn_layers[layer]
            return _leaf_target(
                f"{attn_name}/{flax_layer}", kind, leaf, qkv if layer == "qkv" else None
            )
        return None

    return model, rename


# --- the snapshot ----------------------------------------------------------------------------

NUM_STEPS = {32: 18, 64: 40}  # EDM's deterministic Heun: CIFAR-10 35 NFE, ImageNet 64 79 NFE


def read_snapshot(path: str | Path) -> InertObject:
    """The ``ema`` network (an inert EDMPrecond) of an EDM snapshot; runs no code from it."""
    data = torch_pickle.load(path)
    net = data.get("ema") if isinstance(data, dict) else data
    if not isinstance(net, InertObject):
        raise CheckpointImportError(
            f"{path} holds no EDM network (expected a dict with 'ema', as EDM's "
            "network-snapshot-*.pkl)"
        )
    if _class_name(net) != "EDMPrecond":
        raise CheckpointImportError(
            f"{path}: the network is {_class_name(net)}; cmjax imports EDM's EDMPrecond "
            "networks (edm-*.pkl), not VPPrecond/VEPrecond/iDDPMPrecond (baseline-*.pkl)"
        )
    return net


def import_edm(path: str | Path, **unused: Any):
    """(config, network params) for an EDM ``.pkl`` network snapshot with EDMPrecond."""
    if unused:
        raise CheckpointImportError(f"options {sorted(unused)} do not apply to EDM snapshots")
    precond = read_snapshot(path)
    net = _children(precond).get("model")
    kind = _class_name(net)
    kw = dict(net.state.get("_init_kwargs") or {}) if isinstance(net, InertObject) else {}
    if kind == "SongUNet":
        model, rename = _songunet(net, kw)
    elif kind == "DhariwalUNet":
        model, rename = _dhariwal(net, kw)
    else:
        raise CheckpointImportError(f"{path}: EDM network {kind} has no cmjax counterpart")
    size = int(kw.get("img_resolution", precond.state.get("img_resolution", 32)))
    channels = int(kw.get("in_channels", precond.state.get("img_channels", 3)))
    shape = (size, size, channels)
    num_classes = int(model["num_classes"])
    source = module_state_dict(net)
    abstract = abstract_network_params(model, shape, num_classes)
    params = map_parameters(
        source,
        rename,
        abstract,
        what=f"{path} (EDM {kind})",
        settings={**model, "image_shape": shape},
        ignore=_is_buffer,
    )
    sigma_data = float(precond.state.get("sigma_data", 0.5))
    config = make_config(
        data_name="imagenet64" if num_classes == 1000 else "cifar10",
        shape=shape,
        num_classes=num_classes,
        model=model,
        objective="edm",
        objective_overrides=dict(sigma_data=sigma_data),
        sampling=dict(num_steps=NUM_STEPS.get(size, 18), solver="heun"),
        ema_rates=(0.9999,),
    )
    return config, params
