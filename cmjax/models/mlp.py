"""A noise-conditioned residual MLP for vector data (toy 2-D distributions, tests)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmjax.models.embeddings import check_labels, embed_time, second_time_projection


class MLP(nn.Module):
    """F(x, noise_cond, labels, train, h): (B, D) -> (B, D), e.g. inside the consistency function.

    noise_cond (B,) float, labels (B,) int or None, h (B,) float or None.

    ``time_embedding``: "fourier" (2 * num_fourier random Fourier features of scale
    ``fourier_scale``) or "positional" (as many sinusoids); ``second_time_input``: take h (B,).
    """

    hidden: int = 128
    depth: int = 3
    num_fourier: int = 32
    fourier_scale: float = 1.0
    num_classes: int = 0
    dropout: float = 0.0
    time_embedding: str = "fourier"
    second_time_input: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        noise_cond: jax.Array,
        labels: jax.Array | None = None,
        train: bool = False,
        h: jax.Array | None = None,
    ) -> jax.Array:
        if x.ndim != 2:
            raise ValueError(f"MLP expects vectors of shape (batch, dim), got {x.shape}")
        check_labels(labels, self.num_classes, x.shape[0])
        dim = 2 * self.num_fourier
        emb = embed_time(self.time_embedding, noise_cond, dim, fourier_scale=self.fourier_scale)
        emb = nn.Dense(self.hidden)(emb)
        emb = emb + second_time_projection(
            self,
            h,
            x.shape[0],
            enabled=self.second_time_input,
            kind=self.time_embedding,
            dim=dim,
            features=self.hidden,
            fourier_scale=self.fourier_scale,
            kernel_init=nn.initializers.lecun_normal(),
        )
        emb = nn.Dense(self.hidden)(nn.silu(emb))
        if self.num_classes:
            emb = emb + nn.Embed(self.num_classes, self.hidden)(labels)
        h = nn.Dense(self.hidden)(x.astype(jnp.float32))
        for _ in range(self.depth):
            r = nn.Dense(self.hidden)(nn.silu(nn.LayerNorm()(h)) + emb)
            r = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(r))
            h = h + nn.Dense(self.hidden)(r)
        return nn.Dense(x.shape[-1])(nn.silu(nn.LayerNorm()(h)))
