"""Building blocks shared by the paper networks: initializers, FIR resampling, attention."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# "float64" is for numerical checks (finite differences) and needs jax_enable_x64.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def compute_dtype(name: str):
    """The jnp dtype for a config's ``dtype`` string."""
    if name not in DTYPES:
        raise ValueError(f"model dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def accum_dtype(dtype) -> jnp.dtype:
    """Where residual sums, norms and heads are computed: float32, or float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """DDPM/NCSN++ initializer: variance scaling, fan_avg, uniform; scale 0 means ~zero."""
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def torch_default_init() -> nn.initializers.Initializer:
    """PyTorch's default conv/linear kernel init (ADM): U(±1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def group_norm(
    channels: int, groups: int | None = None, eps: float = 1e-6, name: str | None = None
) -> nn.GroupNorm:
    """GroupNorm computed in (at least) float32 whatever the compute dtype.

    The output dtype is the promotion of the input and the float32 scale/bias: float32 for
    float32 or bfloat16 inputs, float64 for float64 inputs with float64 parameters.
    """
    return nn.GroupNorm(
        num_groups=groups or min(channels // 4, 32), epsilon=eps, dtype=None, name=name
    )


def pixel_norm(a: jax.Array, eps: float = 1e-8) -> jax.Array:
    """a / sqrt(mean over the last (channel) axis of a^2 + eps): unit RMS per example."""
    a = a.astype(accum_dtype(a.dtype))
    return a * jax.lax.rsqrt(jnp.mean(jnp.square(a), axis=-1, keepdims=True) + eps)


def modulate(normed, scale, shift, double_norm: bool = False):
    """AdaGN: a normalized (B, H, W, C) map modulated by per-example (B, C) scale and shift.

    normed * (1 + scale) + shift (ADM's scale-shift norm, EDM's adaptive_scale), or with
    ``double_norm`` sCM's adaptive double normalization (Lu & Song 2024, Sec. 4.1):
    normed * pnorm(scale) + pnorm(shift).
    """
    if double_norm:
        scale, shift = pixel_norm(scale), pixel_norm(shift)
    else:
        scale = 1.0 + scale
    return normed * scale[:, None, None, :] + shift[:, None, None, :]


def dropout_rate_at(rate: float, resolution: int, max_resolution: int | None) -> float:
    """The dropout rate of a layer whose feature maps are ``resolution`` pixels wide.

    ``max_resolution`` 0 or None: ``rate`` everywhere; otherwise ``rate`` only where
    resolution <= max_resolution and 0 elsewhere (iCT on ImageNet 64: 16, as simple diffusion).
    """
    return rate if not max_resolution or resolution <= max_resolution else 0.0


def _fir_2d(kernel_1d: Sequence[int], gain: float) -> np.ndarray:
    k = np.asarray(kernel_1d, np.float32)
    k = np.outer(k, k)
    return k / k.sum() * gain


def _depthwise_fir(x, k2d: np.ndarray, pad: tuple[int, int], stride: int = 1, dilation: int = 1):
    """Filter every channel of x (B, H, W, C) with the 2-D FIR kernel k2d."""
    channels = x.shape[-1]
    w = jnp.asarray(np.broadcast_to(k2d[::-1, ::-1, None, None], (*k2d.shape, 1, channels)))
    return jax.lax.conv_general_dilated(
        x,
        w.astype(x.dtype),
        window_strides=(stride, stride),
        padding=(pad, pad),
        lhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def fir_upsample_2x(x, kernel_1d: Sequence[int] = (1, 3, 3, 1)):
    """StyleGAN2 upsample_2d: zero-insertion then FIR (gain 4): (B, H, W, C) -> (B, 2H, 2W, C)."""
    k = _fir_2d(kernel_1d, gain=4.0)
    p = k.shape[0] - 2
    # lhs_dilation inserts zeros between pixels only; the extra trailing zero row is padding.
    return _depthwise_fir(x, k, ((p + 1) // 2 + 1, p // 2 + 1), dilation=2)


def fir_downsample_2x(x, kernel_1d: Sequence[int] = (1, 3, 3, 1)):
    """StyleGAN2 downsample_2d: FIR, keep every second pixel: (B, H, W, C) -> (B, H/2, W/2, C)."""
    k = _fir_2d(kernel_1d, gain=1.0)
    p = k.shape[0] - 2
    return _depthwise_fir(x, k, ((p + 1) // 2, p // 2), stride=2)


class FIRDownConv3x3(nn.Module):
    """StyleGAN2 conv_downsample_2d: FIR, then a strided 3x3 conv with bias (halves H, W)."""

    features: int
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", default_init(), (3, 3, x.shape[-1], self.features), jnp.float32)
        b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        k = _fir_2d(self.fir_kernel, gain=1.0)
        p = (k.shape[0] - 2) + 2
        x = _depthwise_fir(x.astype(self.dtype), k, ((p + 1) // 2, p // 2))
        y = jax.lax.conv_general_dilated(
            x, w.astype(self.dtype), (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + b.astype(self.dtype)


def spatial_attention(q, k, v, num_heads: int):
    """Multi-head self-attention over the pixels of (B, H, W, C) q, k, v; scale 1/sqrt(C/heads).

    A plain einsum-softmax-einsum (what XLA's own attention path does): differentiable in both
    modes, so ``jax.jvp`` (sCT, MeanFlow) works through every network on every backend, where
    a fused cuDNN kernel has only a reverse-mode rule. Logits and softmax in float32 (float64
    for float64 inputs); the output has the dtype of q.
    """
    b, h, w, c = q.shape
    if c % num_heads:
        raise ValueError(f"{c} channels do not split into {num_heads} heads")
    acc = accum_dtype(q.dtype)

    def heads(t):
        return t.reshape(b, h * w, num_heads, c // num_heads)

    logits = jnp.einsum("bqhd,bkhd->bhqk", heads(q), heads(k), preferred_element_type=acc)
    weights = jax.nn.softmax(logits * (c // num_heads) ** -0.5, axis=-1)
    out = jnp.einsum(
        "bhqk,bkhd->bqhd", weights.astype(v.dtype), heads(v), preferred_element_type=acc
    )
    return out.reshape(b, h, w, c).astype(q.dtype)
