"""DDPM++ (Song et al. 2021) as EDM trains it on CIFAR-10 (Karras et al. 2022, ``SongUNet``
with the ``ddpmpp`` settings): 128 channels, multipliers (2, 2, 2), 4 residual blocks per
resolution, single-head attention at 16x16, a positional noise embedding, box-filter
resampling ([1, 1]: average pooling down, nearest up), skips scaled by 1/sqrt(2).

Initialization as EDM: Xavier-uniform weights and zero biases; the convs that end a residual
branch, the attention output projection and the output conv Xavier-uniform times 1e-5; the
attention qkv projection times sqrt(0.2). Class labels enter as a Linear map of the one-hot
vector times sqrt(num_classes) (with optional label dropout); EDM's augmentation labels
(``augment_dim``, 9 in its published CIFAR-10 checkpoint) through a bias-free Linear.

Parameters (EDM's code, counted exactly): 55,732,739 unconditional; 55,733,891 with
``augment_dim=9``; 55,734,147 with ``num_classes=10``. A config asks for it with
``config.model = dict(name="ddpmpp", dropout=0.13)`` (see :data:`DDPMPP_CIFAR10`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cmjax.models.embeddings import check_labels, embed_time, second_time_projection
from cmjax.models.layers import (
    accum_dtype,
    compute_dtype,
    dropout_rate_at,
    fir_downsample_2x,
    fir_upsample_2x,
    group_norm,
    modulate,
)

# A config's model section for EDM's CIFAR-10 DDPM++ (its train.py: dropout 0.13).
DDPMPP_CIFAR10 = dict(
    name="ddpmpp",
    model_channels=128,
    channel_mult=(2, 2, 2),
    num_blocks=4,
    attn_resolutions=(16,),
    dropout=0.13,
    num_classes=0,
    augment_dim=0,
    noise_cond_scale=1.0,
)

_SKIP_SCALE = np.float32(np.sqrt(0.5))
_GN_EPS = 1e-6


def xavier_uniform(gain2: float = 1.0) -> nn.initializers.Initializer:
    """EDM's ``xavier_uniform`` times sqrt(gain2): U(+-sqrt(6 gain2 / (fan_in + fan_out)))."""
    return nn.initializers.variance_scaling(gain2, "fan_avg", "uniform")


INIT = xavier_uniform()
INIT_ZERO = xavier_uniform(1e-10)  # EDM's init_weight=1e-5 (variance scale 1e-10)
INIT_ATTN = xavier_uniform(0.2)  # EDM's init_weight=sqrt(0.2)


def _conv(features: int, size: int, dtype, init=INIT, name: str | None = None) -> nn.Conv:
    return nn.Conv(features, (size, size), padding="SAME", kernel_init=init, dtype=dtype, name=name)


def _resample(x, up: bool, down: bool, kernel: Sequence[int]):
    if up:
        return fir_upsample_2x(x, kernel)
    if down:
        return fir_downsample_2x(x, kernel)
    return x


class SongUNetBlock(nn.Module):
    """EDM's UNetBlock with the DDPM++ settings; optional single-head attention after it.

    h = conv0(resample(SiLU(GN(x)))); h = SiLU(GN(h + Dense(emb))) (or AdaGN, see
    ``use_scale_shift_norm``); out = (conv1(dropout(h)) + skip(x)) / sqrt(2), skip a resampling
    1x1 conv when the shape changes. Attention: GN, 1x1 qkv (channels interleaved q, k, v per
    head as EDM's reshape), softmax(q k / sqrt(C)), zero-ish projection, rescaled residual.
    """

    out_ch: int
    up: bool = False
    down: bool = False
    attention: bool = False
    dropout: float = 0.0
    resample_filter: Sequence[int] = (1, 1)
    use_scale_shift_norm: bool = False
    adaptive_double_norm: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        in_ch = x.shape[-1]
        out_ch = self.out_ch
        acc = accum_dtype(self.dtype)
        h = nn.silu(group_norm(in_ch, eps=_GN_EPS, name="norm0")(x))
        h = _resample(h, self.up, self.down, self.resample_filter)
        h = _conv(out_ch, 3, self.dtype, name="conv0")(h)
        params = nn.Dense(
            2 * out_ch if self.use_scale_shift_norm else out_ch,
            kernel_init=INIT,
            dtype=self.dtype,
            name="affine",
        )(emb).astype(acc)
        norm1 = group_norm(out_ch, eps=_GN_EPS, name="norm1")
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(params, 2, axis=-1)
            h = nn.silu(modulate(norm1(h), scale, shift, self.adaptive_double_norm))
        else:
            h = nn.silu(norm1(h.astype(acc) + params[:, None, None, :]))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(out_ch, 3, self.dtype, INIT_ZERO, name="conv1")(h)
        skip = x
        if out_ch != in_ch or self.up or self.down:
            skip = _resample(x, self.up, self.down, self.resample_filter)
            skip = _conv(out_ch, 1, self.dtype, name="skip")(skip)
        x = (h.astype(acc) + skip.astype(acc)) * _SKIP_SCALE
        if not self.attention:
            return x

        b, hh, ww, c = x.shape
        qkv = _conv(3 * c, 1, self.dtype, INIT_ATTN, name="qkv")(
            group_norm(c, eps=_GN_EPS, name="norm2")(x)
        )
        # EDM reshapes (B, 3C, H, W) to (B, C, 3, HW): q, k, v interleave along channels.
        qkv = qkv.reshape(b, hh * ww, c, 3).astype(acc)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        w = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / np.sqrt(c).astype(np.float32), -1)
        a = jnp.einsum("bqk,bkc->bqc", w, v).reshape(b, hh, ww, c)
        a = _conv(c, 1, self.dtype, INIT_ZERO, name="proj")(a)
        return (a.astype(acc) + x) * _SKIP_SCALE


class DDPMpp(nn.Module):
    """F(x, noise_cond, labels, train, h): (B, H, W, C) -> (B, H, W, C); EDM's DDPM++.

    noise_cond (B,) float (EDM passes ln(sigma) / 4); labels (B,) int or None; h (B,) float;
    ``augment_labels`` (B, augment_dim) float, EDM's augmentation input (None: not used).

    ``time_embedding``: "positional" (the default; ``model_channels * channel_mult_noise``
    sinusoids, sines first, lowest frequency 1/10000 as EDM) or "fourier" (as many random
    Fourier features of scale ``fourier_scale``). ``second_time_input``: take h (B,) too,
    embedded the same way with its own first layer. ``use_scale_shift_norm``: EDM's
    ``adaptive_scale`` AdaGN (off in DDPM++); ``adaptive_double_norm``: sCM's normalized
    scale/shift on top of it. ``dropout_max_resolution``: 0 = dropout in every block.
    """

    model_channels: int = 128
    channel_mult: Sequence[int] = (2, 2, 2)
    channel_mult_emb: int = 4
    channel_mult_noise: int = 1
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.13
    dropout_max_resolution: int = 0
    label_dropout: float = 0.0
    num_classes: int = 0
    augment_dim: int = 0
    resample_filter: Sequence[int] = (1, 1)
    time_embedding: str = "positional"
    fourier_scale: float = 16.0
    second_time_input: bool = False
    use_scale_shift_norm: bool = False
    adaptive_double_norm: bool = False
    dtype: str = "float32"

    @nn.compact
    def __call__(
        self,
        x,
        noise_cond,
        labels=None,
        train: bool = False,
        h=None,
        *,
        augment_labels=None,
    ):
        h_B = h  # the second time input (below, h names feature maps)
        if x.ndim != 4:
            raise ValueError(f"DDPMpp expects (batch, H, W, C) images, got {x.shape}")
        levels = len(self.channel_mult)
        if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(f"image size {x.shape[1:3]} must be divisible by 2^{levels - 1}")
        if self.adaptive_double_norm and not self.use_scale_shift_norm:
            raise ValueError(
                "model.adaptive_double_norm normalizes AdaGN's scale and shift: "
                "set model.use_scale_shift_norm=True too"
            )
        check_labels(labels, self.num_classes, x.shape[0])
        dtype = compute_dtype(self.dtype)
        acc = accum_dtype(dtype)
        batch = x.shape[0]
        mc = self.model_channels
        noise_ch = mc * self.channel_mult_noise
        emb_ch = mc * self.channel_mult_emb

        # Mapping network: embed(noise) + label + augment -> Dense-SiLU-Dense-SiLU.
        emb = embed_time(
            self.time_embedding, noise_cond, noise_ch, fourier_scale=self.fourier_scale
        ).astype(acc)
        if self.num_classes:
            onehot = jax.nn.one_hot(labels, self.num_classes, dtype=acc)
            if train and self.label_dropout:
                keep = jax.random.uniform(self.make_rng("dropout"), (batch, 1))
                onehot = onehot * (keep >= self.label_dropout).astype(acc)
            emb = emb + nn.Dense(noise_ch, kernel_init=INIT, name="map_label")(
                onehot * np.sqrt(self.num_classes)
            )
        if self.augment_dim and augment_labels is not None:
            if augment_labels.shape != (batch, self.augment_dim):
                raise ValueError(
                    f"augment_labels must have shape ({batch}, {self.augment_dim}), "
                    f"got {augment_labels.shape}"
                )
            emb = emb + nn.Dense(noise_ch, use_bias=False, kernel_init=INIT, name="map_augment")(
                augment_labels.astype(acc)
            )
        elif self.augment_dim and self.is_initializing():
            # Create the augmentation weights even when init is called without them.
            nn.Dense(noise_ch, use_bias=False, kernel_init=INIT, name="map_augment")(
                jnp.zeros((batch, self.augment_dim), acc)
            )
        elif augment_labels is not None:
            raise ValueError("augment_labels were passed but model.augment_dim is 0")
        emb = nn.Dense(emb_ch, kernel_init=INIT, name="map_layer0")(emb)
        emb = emb + second_time_projection(
            self,
            h_B,
            batch,
            enabled=self.second_time_input,
            kind=self.time_embedding,
            dim=noise_ch,
            features=emb_ch,
            fourier_scale=self.fourier_scale,
            kernel_init=INIT,
        )
        emb = nn.silu(emb)
        emb = nn.silu(nn.Dense(emb_ch, kernel_init=INIT, name="map_layer1")(emb))

        def block(resolution: int, out_ch: int, **kw) -> SongUNetBlock:
            return SongUNetBlock(
                out_ch=out_ch,
                dropout=dropout_rate_at(self.dropout, resolution, self.dropout_max_resolution),
                resample_filter=tuple(self.resample_filter),
                use_scale_shift_norm=self.use_scale_shift_norm,
                adaptive_double_norm=self.adaptive_double_norm,
                dtype=dtype,
                **kw,
            )

        # Encoder: a conv, then per resolution (a down block and) num_blocks blocks.
        h = _conv(mc, 3, dtype, name="enc_conv")(x.astype(acc))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            if level:
                res = h.shape[1] // 2
                h = block(res, h.shape[-1], down=True)(h, emb, train)
                skips.append(h)
            res = h.shape[1]
            for _ in range(self.num_blocks):
                attn = res in self.attn_resolutions
                h = block(res, mc * mult, attention=attn)(h, emb, train)
                skips.append(h)

        # Decoder: two blocks (the first with attention) at the bottom, up blocks above;
        # num_blocks + 1 blocks per resolution, each on [h, skip].
        for level in reversed(range(levels)):
            mult = self.channel_mult[level]
            res = h.shape[1]
            if level == levels - 1:
                h = block(res, h.shape[-1], attention=True)(h, emb, train)
                h = block(res, h.shape[-1])(h, emb, train)
            else:
                res = 2 * res
                h = block(res, h.shape[-1], up=True)(h, emb, train)
            for idx in range(self.num_blocks + 1):
                h = jnp.concatenate([h.astype(acc), skips.pop().astype(acc)], axis=-1)
                attn = idx == self.num_blocks and res in self.attn_resolutions
                h = block(res, mc * mult, attention=attn)(h, emb, train)
        assert not skips

        h = nn.silu(group_norm(h.shape[-1], eps=_GN_EPS, name="out_norm")(h))
        out = _conv(x.shape[-1], 3, acc, INIT_ZERO, name="out_conv")(h)
        return out.astype(acc)
