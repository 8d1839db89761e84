"""The FID Inception-v3 network (TF "2015-12-05" graph as ported by pytorch-fid), in Flax.

Images in [-1, 1] of any size are resized to 299x299 bilinearly (half-pixel centres, like
``F.interpolate(..., mode="bilinear", align_corners=False)``) and mapped to the 2048-d
pool_3 features. Weights load from an ``.npz`` of pytorch-fid's state dict
(``pt_inception-2015-12-05-6726825d.pth``) converted once with

    python -c "import torch, numpy as np; sd = torch.load('pt_inception-2015-12-05-6726825d.pth');
               np.savez('inception_fid.npz', **{k: v.numpy() for k, v in sd.items()})"

Nothing is downloaded here; point ``config.eval.inception_path`` (or ``--inception``) at it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cmjax.errors import WeightsError

BN_EPS = 1e-3


class BasicConv(nn.Module):
    """Conv (no bias) + BatchNorm (inference, eps 1e-3) + ReLU; the name matches pytorch-fid."""

    features: int
    kernel: Sequence[int]
    stride: int = 1
    padding: Sequence[int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            tuple(self.kernel),
            (self.stride, self.stride),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_no_pad_count(x):
    """3x3/1 average pool, padding 1, not counting the padding (count_include_pad=False)."""
    summed = nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = nn.avg_pool(ones, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)
    return summed / count


def _max_pool(x, stride=2, pad=0):
    return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_no_pad_count(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_no_pad_count(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b pools by average (no padding count), Mixed_7c by max: the FID graph's quirk."""

    max_pool: bool

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_no_pad_count(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInception(nn.Module):
    """(B, H, W, 3) images in [-1, 1] -> (B, 2048) pool_3 features."""

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FID Inception needs (batch, H, W, 3) RGB images, got {x.shape}")
        x = jax.image.resize(
            x.astype(jnp.float32), (x.shape[0], 299, 299, 3), "bilinear", antialias=False
        )
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(False, name="Mixed_7b")(x)
        x = InceptionE(True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def init_inception(rng=None):
    """Randomly initialized variables (for tests and shape checks)."""
    rng = jax.random.key(0) if rng is None else rng
    return jax.jit(FIDInception().init)(rng, jnp.zeros((1, 75, 75, 3)))


_TORCH_TO_FLAX = {
    "conv.weight": ("params", "conv", "kernel"),
    "bn.weight": ("params", "bn", "scale"),
    "bn.bias": ("params", "bn", "bias"),
    "bn.running_mean": ("batch_stats", "bn", "mean"),
    "bn.running_var": ("batch_stats", "bn", "var"),
}
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_PREFIXES = ("fc.",)  # the 1008-way classifier: not part of pool_3 features


def _open_npz(path: Path, what: str):
    """``np.load`` of an .npz without pickles, or a WeightsError naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise WeightsError(
            f"{what} {path} is not a readable .npz ({type(e).__name__}); convert pytorch-fid's "
            ".pth as described in cmjax/evaluation/inception.py"
        ) from e


def load_inception_weights(path: str | Path):
    """Variables of FIDInception from pytorch-fid's state dict saved as .npz (see module doc).

    Every tensor of the file is mapped (except the classifier ``fc.*`` and BatchNorm's
    ``num_batches_tracked``), and every variable of the network must be filled.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"Inception weights {path} not found. Download pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth and convert it to .npz as described in "
            "cmjax/evaluation/inception.py, then pass its path."
        )
    template = jax.eval_shape(init_inception)
    flat_template = traverse_util.flatten_dict(template)
    filled: dict[tuple[str, ...], np.ndarray] = {}
    with _open_npz(path, "Inception weights") as tensors:
        for key in tensors.files:
            if key.endswith(_IGNORED_SUFFIXES) or key.startswith(_IGNORED_PREFIXES):
                continue
            module, _, leaf = key.rpartition(".")
            module, _, kind = module.rpartition(".")
            mapped = _TORCH_TO_FLAX.get(f"{kind}.{leaf}")
            if mapped is None or not module:
                raise WeightsError(f"{path}: tensor {key!r} has no place in FIDInception")
            collection, sub, name = mapped
            target = (collection, *module.split("."), sub, name)
            if target not in flat_template:
                raise WeightsError(f"{path}: tensor {key!r} has no place in FIDInception")
            value = tensors[key]
            if name == "kernel":
                value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
            want = tuple(flat_template[target].shape)
            if value.shape != want:
                raise WeightsError(
                    f"{path}: tensor {key!r} has shape {value.shape}, the network needs {want}"
                )
            filled[target] = value.astype(np.float32)
    missing = sorted(".".join(k) for k in flat_template if k not in filled)
    if missing:
        raise WeightsError(
            f"{path}: {len(missing)} network variables have no tensor in the "
            f"file, e.g. {missing[:3]}; is it pytorch-fid's FID Inception?"
        )
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in filled.items()})
