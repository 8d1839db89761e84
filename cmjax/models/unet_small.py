"""A small image UNet for tests and CPU demos (not a paper network)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmjax.models.embeddings import check_labels, embed_time, second_time_projection


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
    """F(x, noise_cond, labels, train, h): (B, H, W, C) -> (B, H, W, C).

    H and W divisible by 2^(levels-1); noise_cond (B,) float, labels (B,) int, h (B,) float.

    ``time_embedding``: "fourier" (2 * num_fourier random Fourier features of scale
    ``fourier_scale``) or "positional" (as many sinusoids); ``second_time_input``: take h (B,).
    """

    channels: int = 32
    channel_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    num_fourier: int = 32
    fourier_scale: float = 16.0
    num_classes: int = 0
    dropout: float = 0.0
    time_embedding: str = "fourier"
    second_time_input: bool = False

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, train: bool = False, h=None):
        h_B = h  # the second time input (below, h names feature maps)
        if x.ndim != 4:
            raise ValueError(f"SmallUNet expects (batch, H, W, C) images, got {x.shape}")
        check_labels(labels, self.num_classes, x.shape[0])
        emb_dim = 4 * self.channels
        dim = 2 * self.num_fourier
        emb = embed_time(self.time_embedding, noise_cond, dim, fourier_scale=self.fourier_scale)
        emb = nn.Dense(emb_dim)(emb)
        emb = emb + second_time_projection(
            self,
            h_B,
            x.shape[0],
            enabled=self.second_time_input,
            kind=self.time_embedding,
            dim=dim,
            features=emb_dim,
            fourier_scale=self.fourier_scale,
            kernel_init=nn.initializers.lecun_normal(),
        )
        emb = nn.Dense(emb_dim)(nn.silu(emb))
        if self.num_classes:
            emb = emb + nn.Embed(self.num_classes, emb_dim)(labels)
        h = nn.Conv(self.channels, (3, 3))(x.astype(jnp.float32))
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
        return nn.Conv(x.shape[-1], (3, 3))(h)
