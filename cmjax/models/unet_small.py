"""A small image UNet for tests and CPU demos (not a paper network)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmjax.models.embeddings import GaussianFourierEmbedding, check_labels


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time bias, GroupNorm-SiLU-dropout-conv, residual."""

    channels: int
    dropout: float

    @nn.compact
    def __call__(self, x, emb, train: bool):
        groups = min(8, self.channels)
        h = nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(groups)(x)))
        h = h + nn.Dense(self.channels)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(groups)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1))(x)
        return x + h


class SmallUNet(nn.Module):
    """F(x, c_noise, labels): (B, H, W, C) -> (B, H, W, C); H and W divisible by 2^(levels-1)."""

    channels: int = 32
    channel_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    num_fourier: int = 32
    fourier_scale: float = 16.0
    num_classes: int = 0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x_BxHxWxC, noise_cond_B, labels_B=None, train: bool = False):
        if x_BxHxWxC.ndim != 4:
            raise ValueError(f"SmallUNet expects (batch, H, W, C) images, got {x_BxHxWxC.shape}")
        check_labels(labels_B, self.num_classes, x_BxHxWxC.shape[0])
        emb_dim = 4 * self.channels
        emb = GaussianFourierEmbedding(self.num_fourier, self.fourier_scale)(noise_cond_B)
        emb = nn.Dense(emb_dim)(nn.silu(nn.Dense(emb_dim)(emb)))
        if self.num_classes:
            emb = emb + nn.Embed(self.num_classes, emb_dim)(labels_B)
        h = nn.Conv(self.channels, (3, 3))(x_BxHxWxC.astype(jnp.float32))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.channels * mult, self.dropout)(h, emb, train)
                skips.append(h)
            if level < len(self.channel_mult) - 1:
                h = nn.avg_pool(h, (2, 2), (2, 2))
                skips.append(h)
        h = ResBlock(h.shape[-1], self.dropout)(h, emb, train)
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResBlock(self.channels * mult, self.dropout)(h, emb, train)
            if level > 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = nn.Conv(c, (3, 3))(h)
        h = nn.silu(nn.GroupNorm(min(8, h.shape[-1]))(h))
        return nn.Conv(x_BxHxWxC.shape[-1], (3, 3))(h)
