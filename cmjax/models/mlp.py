"""A noise-conditioned residual MLP for vector data (toy 2-D distributions, tests)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmjax.models.embeddings import GaussianFourierEmbedding, check_labels


class MLP(nn.Module):
    """F(x, c_noise, labels): (B, D) -> (B, D), the network inside the consistency function."""

    hidden: int = 128
    depth: int = 3
    num_fourier: int = 32
    fourier_scale: float = 1.0
    num_classes: int = 0
    dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        x_BxD: jax.Array,
        noise_cond_B: jax.Array,
        labels_B: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        if x_BxD.ndim != 2:
            raise ValueError(f"MLP expects vectors of shape (batch, dim), got {x_BxD.shape}")
        check_labels(labels_B, self.num_classes, x_BxD.shape[0])
        emb = GaussianFourierEmbedding(self.num_fourier, self.fourier_scale)(noise_cond_B)
        emb = nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(emb)))
        if self.num_classes:
            emb = emb + nn.Embed(self.num_classes, self.hidden)(labels_B)
        h = nn.Dense(self.hidden)(x_BxD.astype(jnp.float32))
        for _ in range(self.depth):
            r = nn.Dense(self.hidden)(nn.silu(nn.LayerNorm()(h)) + emb)
            r = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(r))
            h = h + nn.Dense(self.hidden)(r)
        return nn.Dense(x_BxD.shape[-1])(nn.silu(nn.LayerNorm()(h)))
