"""Noise-level and class embeddings shared by the networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of c_noise: (B,) -> (B, 2 * num_features).

    The frequencies W ~ N(0, scale^2) are a fixed (non-trained) parameter, as in NCSN++;
    iCT uses scale 0.02 (the original consistency models used 16).
    """

    num_features: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, noise_cond: jax.Array) -> jax.Array:
        w = self.param(
            "W", nn.initializers.normal(stddev=self.scale), (self.num_features,), jnp.float32
        )
        w = jax.lax.stop_gradient(w)
        proj = noise_cond.astype(jnp.float32)[:, None] * w[None, :] * 2.0 * math.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def sinusoidal_embedding(noise_cond: jax.Array, dim: int, max_period: float = 10_000.0):
    """Transformer-style positional embedding of c_noise (ADM): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = noise_cond.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def check_labels(labels: jax.Array | None, num_classes: int, batch_size: int) -> None:
    """Raise a clear error when labels do not fit a (un)conditional network."""
    if num_classes > 0:
        if labels is None:
            raise ValueError(
                f"this network is class-conditional (num_classes={num_classes}): "
                "pass integer labels of shape (batch,)"
            )
        if labels.shape != (batch_size,):
            raise ValueError(f"labels must have shape ({batch_size},), got {labels.shape}")
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    elif labels is not None:
        raise ValueError(
            "this network is unconditional (num_classes=0) but labels were passed; "
            "set model.num_classes to train a conditional model"
        )
