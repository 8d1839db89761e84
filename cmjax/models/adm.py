"""The ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs") as the consistency-model
papers use it on ImageNet 64: class-conditional, residual-block up/down sampling, multi-head
attention at 32, 16 and 8 pixels, a sinusoidal noise embedding of 1000 * 0.25 ln(sigma).

Initialized as the PyTorch reference (openai/consistency_models ``cm/unet.py``): PyTorch's
default conv/linear init, zero output convs, GroupNorm eps 1e-5 (PyTorch's default) and a
class embedding N(0, 1) (``nn.Embedding``'s default).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmjax.models.embeddings import check_labels, embed_time, second_time_projection
from cmjax.models.layers import (
    accum_dtype,
    compute_dtype,
    dropout_rate_at,
    group_norm,
    modulate,
    spatial_attention,
    torch_default_init,
)

# torch.nn.GroupNorm's default epsilon (the reference's GroupNorm32).
GROUP_NORM_EPS = 1e-5


def _conv(features: int, dtype, size: int = 3, zero: bool = False) -> nn.Conv:
    init = nn.initializers.zeros if zero else torch_default_init()
    return nn.Conv(features, (size, size), padding="SAME", kernel_init=init, dtype=dtype)


class ADMResBlock(nn.Module):
    """GN-SiLU-(resample)-conv, time embedding added (or GN scale-shift), GN-SiLU-drop-zero conv.

    With ``use_scale_shift_norm`` (AdaGN) the second norm is GN(h) * (1 + s) + b with
    (s, b) = Dense(SiLU(emb)); with ``adaptive_double_norm`` as well it is
    GN(h) * pnorm(s) + pnorm(b), pnorm(a) = a / sqrt(mean_channels(a^2) + eps) (sCM, Lu & Song
    2024, Sec. 4.1).
    """

    out_ch: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    adaptive_double_norm: bool = False
    norm_groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        acc = accum_dtype(self.dtype)
        h = nn.silu(group_norm(in_ch, self.norm_groups, GROUP_NORM_EPS)(x))
        if self.up:
            b, hh, ww, _ = x.shape
            h = jax.image.resize(h, (b, 2 * hh, 2 * ww, in_ch), "nearest")
            x = jax.image.resize(x, (b, 2 * hh, 2 * ww, in_ch), "nearest")
        elif self.down:
            h = nn.avg_pool(h, (2, 2), (2, 2))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        h = _conv(out_ch, self.dtype)(h)
        emb_out = nn.Dense(
            2 * out_ch if self.use_scale_shift_norm else out_ch,
            kernel_init=torch_default_init(),
            dtype=self.dtype,
        )(nn.silu(emb)).astype(acc)
        norm = group_norm(out_ch, self.norm_groups, GROUP_NORM_EPS)
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = modulate(norm(h), scale, shift, self.adaptive_double_norm)
        else:
            h = norm(h.astype(acc) + emb_out[:, None, None, :])
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = _conv(out_ch, self.dtype, zero=True)(h)
        if in_ch != out_ch:
            x = _conv(out_ch, self.dtype, size=1)(x)
        return x.astype(acc) + h.astype(acc)


class ADMAttention(nn.Module):
    """GroupNorm, 1x1 qkv projection (q, k, v blocks, then heads), attention, zero projection."""

    num_head_channels: int = 64
    norm_groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if c % self.num_head_channels:
            raise ValueError(f"{c} channels are not divisible by {self.num_head_channels}")
        qkv = nn.Dense(3 * c, kernel_init=torch_default_init(), dtype=self.dtype)(
            group_norm(c, self.norm_groups, GROUP_NORM_EPS)(x)
        )
        q, k, v = jnp.split(qkv, 3, axis=-1)
        h = spatial_attention(q, k, v, num_heads=c // self.num_head_channels)
        h = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        acc = accum_dtype(self.dtype)
        return x.astype(acc) + h.astype(acc)


class ADMUNet(nn.Module):
    """F(x, noise_cond, labels, train, h): (B, H, W, C) -> (B, H, W, C).

    noise_cond (B,) float: iCT passes 1000 * 0.25 ln(sigma); labels (B,) int; h (B,) float.

    The ImageNet 64 configuration (the defaults) has 282,168,003 parameters; with
    ``use_scale_shift_norm=True`` 295,899,267 (iCT turns scale-shift off: it hurts CT).

    ``dropout_max_resolution``: 0 = dropout in every res block; N = only in res blocks whose
    feature maps are at most N pixels wide (iCT's ImageNet 64 recipe: 16).
    ``time_embedding``: "positional" (the default, ADM's sinusoids) or "fourier"
    (``model_channels`` random Fourier features of scale ``fourier_scale``).
    ``second_time_input``: take h (B,) too, embedded the same way with its own first layer.
    ``adaptive_double_norm``: with ``use_scale_shift_norm``, sCM's GN(h) pnorm(s) + pnorm(b).
    """

    model_channels: int = 192
    channel_mult: Sequence[int] = (1, 2, 3, 4)
    num_res_blocks: int = 3
    attn_resolutions: Sequence[int] = (32, 16, 8)
    num_head_channels: int = 64
    dropout: float = 0.2
    use_scale_shift_norm: bool = False
    num_classes: int = 1000
    norm_groups: int = 32
    dtype: str = "float32"
    dropout_max_resolution: int = 0
    time_embedding: str = "positional"
    fourier_scale: float = 16.0
    second_time_input: bool = False
    adaptive_double_norm: bool = False

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, train: bool = False, h=None):
        h_B = h  # the second time input (below, h names feature maps)
        if self.adaptive_double_norm and not self.use_scale_shift_norm:
            raise ValueError(
                "model.adaptive_double_norm normalizes AdaGN's scale and shift: "
                "set model.use_scale_shift_norm=True too"
            )
        if x.ndim != 4:
            raise ValueError(f"ADMUNet expects (batch, H, W, C) images, got {x.shape}")
        levels = len(self.channel_mult)
        if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(f"image size {x.shape[1:3]} must be divisible by 2^{levels - 1}")
        check_labels(labels, self.num_classes, x.shape[0])
        dtype = compute_dtype(self.dtype)
        acc = accum_dtype(dtype)
        mc = self.model_channels
        # ADM's sinusoids: cosines first, frequencies 10000^(-i / half).
        sinusoid = dict(endpoint=False, sin_first=False)
        emb = embed_time(
            self.time_embedding, noise_cond, mc, fourier_scale=self.fourier_scale, **sinusoid
        )
        emb = nn.Dense(4 * mc, kernel_init=torch_default_init())(emb)
        emb = emb + second_time_projection(
            self,
            h_B,
            x.shape[0],
            enabled=self.second_time_input,
            kind=self.time_embedding,
            dim=mc,
            features=4 * mc,
            fourier_scale=self.fourier_scale,
            kernel_init=torch_default_init(),
            **sinusoid,
        )
        emb = nn.Dense(4 * mc, kernel_init=torch_default_init())(nn.silu(emb))
        if self.num_classes:
            # torch.nn.Embedding's default init: N(0, 1).
            emb = emb + nn.Embed(
                self.num_classes, 4 * mc, embedding_init=nn.initializers.normal(1.0)
            )(labels)

        def res_block(resolution: int, **kw):
            return ADMResBlock(
                dropout=dropout_rate_at(self.dropout, resolution, self.dropout_max_resolution),
                use_scale_shift_norm=self.use_scale_shift_norm,
                adaptive_double_norm=self.adaptive_double_norm,
                norm_groups=self.norm_groups,
                dtype=dtype,
                **kw,
            )

        def maybe_attend(h):
            if h.shape[1] in self.attn_resolutions:
                h = ADMAttention(self.num_head_channels, self.norm_groups, dtype)(h)
            return h

        x = x.astype(acc)
        hs = [_conv(mc * self.channel_mult[0], dtype)(x)]
        h = hs[-1]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = maybe_attend(res_block(h.shape[1], out_ch=mc * mult)(h, emb, train))
                hs.append(h)
            if level != levels - 1:
                h = res_block(h.shape[1] // 2, down=True)(h, emb, train)
                hs.append(h)

        h = res_block(h.shape[1])(h, emb, train)
        h = ADMAttention(self.num_head_channels, self.norm_groups, dtype)(h)
        h = res_block(h.shape[1])(h, emb, train)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h.astype(acc), hs.pop().astype(acc)], -1)
                h = maybe_attend(res_block(h.shape[1], out_ch=mc * mult)(h, emb, train))
                if level and i == self.num_res_blocks:
                    h = res_block(2 * h.shape[1], up=True)(h, emb, train)
        assert not hs

        h = nn.silu(group_norm(h.shape[-1], self.norm_groups, GROUP_NORM_EPS)(h))
        return nn.Conv(
            x.shape[-1],
            (3, 3),
            padding="SAME",
            kernel_init=nn.initializers.zeros,
            dtype=acc,
        )(h)
