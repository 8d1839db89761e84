"""The ADM UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs") as the consistency-model
papers use it on ImageNet 64: class-conditional, residual-block up/down sampling, multi-head
attention at 32, 16 and 8 pixels, a sinusoidal noise embedding of 1000 * 0.25 ln(sigma).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmjax.models.embeddings import check_labels, sinusoidal_embedding
from cmjax.models.layers import compute_dtype, group_norm, spatial_attention, torch_default_init


def _conv(features: int, dtype, size: int = 3, zero: bool = False) -> nn.Conv:
    init = nn.initializers.zeros if zero else torch_default_init()
    return nn.Conv(features, (size, size), padding="SAME", kernel_init=init, dtype=dtype)


class ADMResBlock(nn.Module):
    """GN-SiLU-(resample)-conv, time embedding added (or GN scale-shift), GN-SiLU-drop-zero conv."""

    out_ch: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    norm_groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        h = nn.silu(group_norm(in_ch, self.norm_groups)(x))
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
        )(nn.silu(emb))[:, None, None, :].astype(jnp.float32)
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = group_norm(out_ch, self.norm_groups)(h) * (1.0 + scale) + shift
        else:
            h = group_norm(out_ch, self.norm_groups)(h.astype(jnp.float32) + emb_out)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = _conv(out_ch, self.dtype, zero=True)(h)
        if in_ch != out_ch:
            x = _conv(out_ch, self.dtype, size=1)(x)
        return x.astype(jnp.float32) + h.astype(jnp.float32)


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
            group_norm(c, self.norm_groups)(x)
        )
        q, k, v = jnp.split(qkv, 3, axis=-1)
        h = spatial_attention(q, k, v, num_heads=c // self.num_head_channels)
        h = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        return x.astype(jnp.float32) + h.astype(jnp.float32)


class ADMUNet(nn.Module):
    """F(x, c_noise, labels): (B, H, W, C) -> (B, H, W, C); c_noise = 1000 * 0.25 ln(sigma).

    The ImageNet 64 configuration (the defaults) has 282,168,003 parameters; with
    ``use_scale_shift_norm=True`` 295,899,267 (iCT turns scale-shift off: it hurts CT).
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

    @nn.compact
    def __call__(self, x_BxHxWxC, noise_cond_B, labels_B=None, train: bool = False):
        if x_BxHxWxC.ndim != 4:
            raise ValueError(f"ADMUNet expects (batch, H, W, C) images, got {x_BxHxWxC.shape}")
        levels = len(self.channel_mult)
        if x_BxHxWxC.shape[1] % 2 ** (levels - 1) or x_BxHxWxC.shape[2] % 2 ** (levels - 1):
            raise ValueError(
                f"image size {x_BxHxWxC.shape[1:3]} must be divisible by 2^{levels - 1}"
            )
        check_labels(labels_B, self.num_classes, x_BxHxWxC.shape[0])
        dtype = compute_dtype(self.dtype)
        mc = self.model_channels
        emb = sinusoidal_embedding(noise_cond_B, mc)
        emb = nn.Dense(4 * mc, kernel_init=torch_default_init())(emb)
        emb = nn.Dense(4 * mc, kernel_init=torch_default_init())(nn.silu(emb))
        if self.num_classes:
            emb = emb + nn.Embed(self.num_classes, 4 * mc)(labels_B)

        def res_block(**kw):
            return ADMResBlock(
                dropout=self.dropout,
                use_scale_shift_norm=self.use_scale_shift_norm,
                norm_groups=self.norm_groups,
                dtype=dtype,
                **kw,
            )

        def maybe_attend(h):
            if h.shape[1] in self.attn_resolutions:
                h = ADMAttention(self.num_head_channels, self.norm_groups, dtype)(h)
            return h

        x = x_BxHxWxC.astype(jnp.float32)
        hs = [_conv(mc * self.channel_mult[0], dtype)(x)]
        h = hs[-1]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = maybe_attend(res_block(out_ch=mc * mult)(h, emb, train))
                hs.append(h)
            if level != levels - 1:
                h = res_block(down=True)(h, emb, train)
                hs.append(h)

        h = res_block()(h, emb, train)
        h = ADMAttention(self.num_head_channels, self.norm_groups, dtype)(h)
        h = res_block()(h, emb, train)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h.astype(jnp.float32), hs.pop().astype(jnp.float32)], -1)
                h = maybe_attend(res_block(out_ch=mc * mult)(h, emb, train))
                if level and i == self.num_res_blocks:
                    h = res_block(up=True)(h, emb, train)
        assert not hs

        h = nn.silu(group_norm(h.shape[-1], self.norm_groups)(h))
        return nn.Conv(
            x.shape[-1],
            (3, 3),
            padding="SAME",
            kernel_init=nn.initializers.zeros,
            dtype=jnp.float32,
        )(h)
