"""NCSN++ (Song et al. 2021, "Score-Based Generative Modeling through SDEs") in the
configuration the consistency-model papers train on CIFAR-10: BigGAN residual blocks with FIR
up/down sampling, skip rescaling, a residual input pyramid, attention at 16x16, a Gaussian
Fourier noise embedding and an additive time bias.

Also (off by default, so the paper configuration is unchanged): a positional time embedding
(``time_embedding="positional"``), a second time input h (``second_time_input=True``) and
dropout only at low resolutions (``dropout_max_resolution``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cmjax.models.embeddings import check_labels, embed_time, second_time_projection
from cmjax.models.layers import (
    FIRDownConv3x3,
    accum_dtype,
    compute_dtype,
    default_init,
    dropout_rate_at,
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
        acc = accum_dtype(self.dtype)
        out = x.astype(acc) + h.astype(acc)
        return out / _SQRT2 if self.skip_rescale else out


# The reference's NIN layers (q, k, v) default to default_init(0.1).
QKV_INIT_SCALE = 0.1


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with a zero-initialized output projection.

    q, k, v are 1x1 projections initialized with ``default_init(0.1)`` as the reference's NIN.
    """

    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        h = group_norm(c)(x)
        q, k, v = (conv1x1(c, self.dtype, QKV_INIT_SCALE)(h) for _ in range(3))
        h = conv1x1(c, self.dtype, self.init_scale)(spatial_attention(q, k, v, num_heads=1))
        acc = accum_dtype(self.dtype)
        out = x.astype(acc) + h.astype(acc)
        return out / _SQRT2 if self.skip_rescale else out


class NCSNpp(nn.Module):
    """F(x, noise_cond, labels, train, h): (B, H, W, C) -> (B, H, W, C).

    noise_cond (B,) float: iCT passes 0.25 ln(sigma); labels (B,) int; h (B,) float.

    The CIFAR-10 iCT configuration (the defaults) has 56,395,651 parameters; with
    ``num_res_blocks=8`` ("deep") 97,610,627.

    ``time_embedding``: "fourier" (the default: 2 nf random Fourier features of scale
    ``fourier_scale``) or "positional" (nf sinusoids, as score_sde's DDPM++).
    ``second_time_input``: take h (B,) too, embedded the same way with its own first layer.
    ``dropout_max_resolution``: 0 = dropout in every res block; N = only in blocks whose
    feature maps are at most N pixels wide.
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
    time_embedding: str = "fourier"
    second_time_input: bool = False
    dropout_max_resolution: int = 0

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, train: bool = False, h=None):
        h_B = h  # the second time input (below, h names feature maps)
        if x.ndim != 4:
            raise ValueError(f"NCSNpp expects (batch, H, W, C) images, got {x.shape}")
        levels = len(self.ch_mult)
        if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(f"image size {x.shape[1:3]} must be divisible by 2^{levels - 1}")
        check_labels(labels, self.num_classes, x.shape[0])
        dtype = compute_dtype(self.dtype)
        acc = accum_dtype(dtype)
        nf = self.nf
        emb_dim = 2 * nf if self.time_embedding == "fourier" else nf
        temb = embed_time(
            self.time_embedding, noise_cond, emb_dim, fourier_scale=self.fourier_scale
        )
        temb = nn.Dense(4 * nf, kernel_init=default_init())(temb)
        temb = temb + second_time_projection(
            self,
            h_B,
            x.shape[0],
            enabled=self.second_time_input,
            kind=self.time_embedding,
            dim=emb_dim,
            features=4 * nf,
            fourier_scale=self.fourier_scale,
            kernel_init=default_init(),
        )
        temb = nn.Dense(4 * nf, kernel_init=default_init())(nn.silu(temb))
        if self.num_classes:
            temb = temb + nn.Embed(self.num_classes, 4 * nf)(labels)

        def res_block(resolution: int, **kw):
            return BigGANResBlock(
                dropout=dropout_rate_at(self.dropout, resolution, self.dropout_max_resolution),
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

        x = x.astype(acc)
        pyramid = x
        hs = [conv3x3(nf, dtype)(x)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = res_block(hs[-1].shape[1], out_ch=nf * mult)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn_block()(h)
                hs.append(h)
            if level != levels - 1:
                h = res_block(hs[-1].shape[1] // 2, down=True)(hs[-1], temb, train)
                pyramid = FIRDownConv3x3(h.shape[-1], self.fir_kernel, dtype)(pyramid)
                pyramid = (pyramid + h) / _SQRT2 if self.skip_rescale else pyramid + h
                h = pyramid
                hs.append(h)

        h = res_block(hs[-1].shape[1])(hs[-1], temb, train)
        h = attn_block()(h)
        h = res_block(h.shape[1])(h, temb, train)

        for level in reversed(range(levels)):
            for _ in range(self.num_res_blocks + 1):
                skip = hs.pop()
                h = jnp.concatenate([h.astype(acc), skip.astype(acc)], axis=-1)
                h = res_block(h.shape[1], out_ch=nf * self.ch_mult[level])(h, temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attn_block()(h)
            if level != 0:
                h = res_block(2 * h.shape[1], up=True)(h, temb, train)
        assert not hs

        h = nn.silu(group_norm(h.shape[-1])(h))
        out = nn.Conv(
            x.shape[-1],
            (3, 3),
            padding="SAME",
            kernel_init=default_init(self.init_scale),
            dtype=acc,
        )(h)
        return jax.lax.convert_element_type(out, acc)
