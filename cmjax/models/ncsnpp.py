"""NCSN++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs") in the
configuration the consistency-model papers train on CIFAR-10: BigGAN residual blocks with FIR
up/down sampling, skip rescaling, a residual input pyramid, attention at 16x16, a Gaussian
Fourier noise embedding and an additive time bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cmjax.models.embeddings import GaussianFourierEmbedding, check_labels
from cmjax.models.layers import (
    FIRDownConv3x3,
    compute_dtype,
    default_init,
    fir_downsample_2x,
    fir_upsample_2x,
    group_norm,
    spatial_attention,
)

_SQRT2 = np.float32(np.sqrt(2.0))


def conv3x3(features: int, dtype, init_scale: float = 1.0) -> nn.Conv:
    return nn.Conv(
        features, (3, 3), padding="SAME", kernel_init=default_init(init_scale), dtype=dtype
    )


def conv1x1(features: int, dtype, init_scale: float = 1.0) -> nn.Dense:
    return nn.Dense(features, kernel_init=default_init(init_scale), dtype=dtype)


class BigGANResBlock(nn.Module):
    """GN-act-(FIR resample)-conv, + Dense(act(temb)) bias, GN-act-dropout-conv; rescaled skip."""

    out_ch: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.0
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train: bool):
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        h = nn.silu(group_norm(in_ch)(x))
        if self.up:
            h, x = fir_upsample_2x(h, self.fir_kernel), fir_upsample_2x(x, self.fir_kernel)
        elif self.down:
            h, x = fir_downsample_2x(h, self.fir_kernel), fir_downsample_2x(x, self.fir_kernel)
        h = conv3x3(out_ch, self.dtype)(h)
        h = (
            h
            + nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype)(nn.silu(temb))[
                :, None, None, :
            ]
        )
        h = nn.silu(group_norm(out_ch)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, self.dtype, self.init_scale)(h)
        if in_ch != out_ch or self.up or self.down:
            x = conv1x1(out_ch, self.dtype)(x)
        out = x.astype(jnp.float32) + h.astype(jnp.float32)
        return out / _SQRT2 if self.skip_rescale else out


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with a zero-initialized output projection."""

    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        h = group_norm(c)(x)
        q, k, v = (conv1x1(c, self.dtype)(h) for _ in range(3))
        h = conv1x1(c, self.dtype, self.init_scale)(spatial_attention(q, k, v, num_heads=1))
        out = x.astype(jnp.float32) + h.astype(jnp.float32)
        return out / _SQRT2 if self.skip_rescale else out


class NCSNpp(nn.Module):
    """F(x, c_noise, labels): (B, H, W, C) -> (B, H, W, C); c_noise = 0.25 ln(sigma).

    The CIFAR-10 iCT configuration (the defaults) has 56,395,651 parameters; with
    ``num_res_blocks=8`` ("deep") 97,610,627.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.3
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    fourier_scale: float = 0.02
    skip_rescale: bool = True
    init_scale: float = 0.0
    num_classes: int = 0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BxHxWxC, noise_cond_B, labels_B=None, train: bool = False):
        if x_BxHxWxC.ndim != 4:
            raise ValueError(f"NCSNpp expects (batch, H, W, C) images, got {x_BxHxWxC.shape}")
        levels = len(self.ch_mult)
        if x_BxHxWxC.shape[1] % 2 ** (levels - 1) or x_BxHxWxC.shape[2] % 2 ** (levels - 1):
            raise ValueError(
                f"image size {x_BxHxWxC.shape[1:3]} must be divisible by 2^{levels - 1}"
            )
        check_labels(labels_B, self.num_classes, x_BxHxWxC.shape[0])
        dtype = compute_dtype(self.dtype)
        nf = self.nf
        temb = GaussianFourierEmbedding(nf, self.fourier_scale)(noise_cond_B)
        temb = nn.Dense(4 * nf, kernel_init=default_init())(temb)
        temb = nn.Dense(4 * nf, kernel_init=default_init())(nn.silu(temb))
        if self.num_classes:
            temb = temb + nn.Embed(self.num_classes, 4 * nf)(labels_B)

        def res_block(**kw):
            return BigGANResBlock(
                dropout=self.dropout,
                fir_kernel=self.fir_kernel,
                skip_rescale=self.skip_rescale,
                init_scale=self.init_scale,
                dtype=dtype,
                **kw,
            )

        def attn_block():
            return AttnBlock(
                skip_rescale=self.skip_rescale, init_scale=self.init_scale, dtype=dtype
            )

        x = x_BxHxWxC.astype(jnp.float32)
        pyramid = x
        hs = [conv3x3(nf, dtype)(x)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = res_block(out_ch=nf * mult)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn_block()(h)
                hs.append(h)
            if level != levels - 1:
                h = res_block(down=True)(hs[-1], temb, train)
                pyramid = FIRDownConv3x3(h.shape[-1], self.fir_kernel, dtype)(pyramid)
                pyramid = (pyramid + h) / _SQRT2 if self.skip_rescale else pyramid + h
                h = pyramid
                hs.append(h)

        h = res_block()(hs[-1], temb, train)
        h = attn_block()(h)
        h = res_block()(h, temb, train)

        for level in reversed(range(levels)):
            for _ in range(self.num_res_blocks + 1):
                skip = hs.pop()
                h = jnp.concatenate([h.astype(jnp.float32), skip.astype(jnp.float32)], axis=-1)
                h = res_block(out_ch=nf * self.ch_mult[level])(h, temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attn_block()(h)
            if level != 0:
                h = res_block(up=True)(h, temb, train)
        assert not hs

        h = nn.silu(group_norm(h.shape[-1])(h))
        out = nn.Conv(
            x.shape[-1],
            (3, 3),
            padding="SAME",
            kernel_init=default_init(self.init_scale),
            dtype=jnp.float32,
        )(h)
        return jax.lax.convert_element_type(out, jnp.float32)
