"""LPIPS (Zhang et al. 2018, *The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric*, v0.1 with VGG16), in Flax: the distance CD's CIFAR-10 and ImageNet 64 recipes use.

d(x, y) = sum_l mean_{h,w} w_l . (phi_l(x) / ||phi_l(x)|| - phi_l(y) / ||phi_l(y)||)^2

for images x, y in [-1, 1] (B, H, W, 3): the lpips package's scaling layer ((x - shift) /
scale, i.e. ImageNet's mean and std on (x + 1) / 2), VGG16's conv features after relu1_2,
relu2_2, relu3_3, relu4_3 and relu5_3, each normalized over channels (eps 1e-10), squared
differences weighted by a learned non-negative 1x1 conv (no bias) per layer, averaged over
space and summed. (B,) float32.

Weights come from the user's files, read without running code from them
(``cmjax.importers.torch_pickle``): torchvision's VGG16 state dict (``vgg16-397923af.pth``;
``features.{0,2,5,...,28}.weight/bias``) and the lpips package's linear heads
(``lpips/weights/v0.1/vgg.pth``; ``lin{0..4}.model.1.weight``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cmjax.errors import WeightsError

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# VGG16's conv layers by their index in torchvision's ``features`` Sequential, and the
# 2x2 max-pools before blocks 2..5; LPIPS reads the ReLU after the last conv of each block.
BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
WIDTHS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS-VGG: ``apply({"params": p}, x, y)`` -> (B,) for x, y (B, H, W, 3) in [-1, 1].

    ``pool``: VGG's 2x2 pooling between blocks, ``"max"`` (VGG16 and the lpips package; jcm's
    CIFAR-10 CD) or ``"avg"`` (piq's ``LPIPS(replace_pooling=True)``, which the official
    PyTorch CD code uses on ImageNet 64). The parameters are the same for both.
    """

    pool: str = "max"

    @staticmethod
    def example_inputs() -> tuple[jax.Array, jax.Array]:
        """A call that builds every parameter (for abstract shapes)."""
        x = jnp.zeros((1, 32, 32, 3), jnp.float32)
        return x, x

    def features(self, x: jax.Array) -> list[jax.Array]:
        x = (x.astype(jnp.float32) - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        out = []
        for b, (convs, width) in enumerate(zip(BLOCKS, WIDTHS, strict=True)):
            if b:
                pool = nn.max_pool if self.pool == "max" else nn.avg_pool
                x = pool(x, (2, 2), strides=(2, 2))
            for j, _ in enumerate(convs):
                x = nn.relu(nn.Conv(width, (3, 3), padding=1, name=f"conv{b}_{j}")(x))
            out.append(x)
        return out

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        batch = x.shape[0]
        total = jnp.zeros((batch,), jnp.float32)
        # One VGG pass over both batches.
        for layer, f in enumerate(self.features(jnp.concatenate([x, y]))):
            a, b = _unit(f[:batch]), _unit(f[batch:])
            lin = nn.Conv(1, (1, 1), use_bias=False, name=f"lin{layer}")(jnp.square(a - b))
            total = total + jnp.mean(lin, axis=(1, 2, 3))
        return total


def _unit(f: jax.Array) -> jax.Array:
    """Features divided by their norm over channels (+ 1e-10), as the lpips package. The
    squared norm is floored at 1e-30 inside the square root: the same value wherever it
    matters, and a finite gradient where every channel of a position is 0 after its ReLU
    (sqrt's derivative is infinite at 0, and 0 * inf would put NaN into the student)."""
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    return f / (jnp.sqrt(jnp.maximum(sq, 1e-30)) + 1e-10)


def lpips_params(vgg: Mapping[str, np.ndarray], lin: Mapping[str, np.ndarray]) -> dict:
    """The Flax parameters of ``LPIPS`` from torchvision's VGG16 state dict and the lpips
    package's linear heads (arrays by their torch names); WeightsError naming a missing or
    mis-shaped tensor."""
    params: dict[str, Any] = {}

    def take(sd, key, shape, where):
        if key not in sd:
            raise WeightsError(f"{where} has no tensor {key!r}; is it the right file?")
        a = np.asarray(sd[key], np.float32)
        if a.shape != shape:
            raise WeightsError(f"{where}: {key!r} has shape {a.shape}, LPIPS-VGG needs {shape}")
        return a

    cin = 3
    for b, (convs, width) in enumerate(zip(BLOCKS, WIDTHS, strict=True)):
        for j, idx in enumerate(convs):
            w = take(vgg, f"features.{idx}.weight", (width, cin, 3, 3), "the VGG16 weights")
            bias = take(vgg, f"features.{idx}.bias", (width,), "the VGG16 weights")
            params[f"conv{b}_{j}"] = {"kernel": np.transpose(w, (2, 3, 1, 0)), "bias": bias}
            cin = width
        w = take(lin, f"lin{b}.model.1.weight", (1, width, 1, 1), "the LPIPS linear heads")
        params[f"lin{b}"] = {"kernel": np.transpose(w, (2, 3, 1, 0))}
    return params


def load_lpips_params(vgg_path: str | Path, lin_path: str | Path) -> dict:
    """``lpips_params`` of the two weight files, read without executing anything."""
    from cmjax.importers.torch_pickle import load

    tensors = []
    for path, what, hint in (
        (vgg_path, "VGG16 weights", "torchvision's vgg16-397923af.pth"),
        (lin_path, "LPIPS linear heads", "the lpips package's lpips/weights/v0.1/vgg.pth"),
    ):
        if not path or not Path(path).is_file():
            raise WeightsError(f"{what} {path!r} not found; pass the path of {hint}")
        sd = load(path)
        if not isinstance(sd, Mapping):
            raise WeightsError(f"{path} holds a {type(sd).__name__}, not a state dict")
        tensors.append({k: np.asarray(v) for k, v in sd.items()})
    return lpips_params(*tensors)
