"""Noise-level and class embeddings shared by the networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cmjax.models.layers import accum_dtype


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
        dt = accum_dtype(noise_cond.dtype)
        proj = noise_cond.astype(dt)[:, None] * w.astype(dt)[None, :] * 2.0 * math.pi
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def sinusoidal_embedding(
    noise_cond: jax.Array,
    dim: int,
    max_period: float = 10_000.0,
    *,
    endpoint: bool = False,
    sin_first: bool = False,
) -> jax.Array:
    """Transformer-style positional embedding of c_noise: (B,) -> (B, dim).

    Frequencies max_period^(-i / n), i = 0 .. half - 1, with n = half (ADM; ``endpoint=False``)
    or n = half - 1 (DDPM++ in score_sde and EDM; ``endpoint=True``, so the lowest frequency is
    exactly 1 / max_period). ADM puts the cosines first, DDPM++ the sines (``sin_first``).
    """
    half = dim // 2
    denom = half - 1 if endpoint else half
    dt = accum_dtype(noise_cond.dtype)
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=dt) / max(denom, 1))
    args = noise_cond.astype(dt)[:, None] * freqs[None, :]
    parts = [jnp.sin(args), jnp.cos(args)] if sin_first else [jnp.cos(args), jnp.sin(args)]
    emb = jnp.concatenate(parts, axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


TIME_EMBEDDINGS = ("fourier", "positional")


def embed_time(
    kind: str,
    t_B: jax.Array,
    dim: int,
    *,
    fourier_scale: float,
    endpoint: bool = True,
    sin_first: bool = True,
    name: str | None = None,
) -> jax.Array:
    """A (B,) time / noise input embedded as (B, dim): call inside a compact module.

    ``kind`` "fourier": random Fourier features, a fixed (untrained) parameter W of dim / 2
    frequencies ~ N(0, fourier_scale^2) (NCSN++, iCT); "positional": the fixed sinusoids of
    :func:`sinusoidal_embedding` (ADM, DDPM++; what sCT and MeanFlow use).
    """
    if kind == "fourier":
        if dim % 2:
            raise ValueError(f"a Fourier time embedding needs an even size, got {dim}")
        return GaussianFourierEmbedding(dim // 2, fourier_scale, name=name)(t_B)
    if kind == "positional":
        return sinusoidal_embedding(t_B, dim, endpoint=endpoint, sin_first=sin_first)
    raise ValueError(f"model.time_embedding must be one of {TIME_EMBEDDINGS}, got {kind!r}")


def second_time_projection(
    module: nn.Module,
    h_B: jax.Array | None,
    batch_size: int,
    *,
    enabled: bool,
    kind: str,
    dim: int,
    features: int,
    fourier_scale: float,
    kernel_init: nn.initializers.Initializer,
    endpoint: bool = True,
    sin_first: bool = True,
) -> jax.Array | float:
    """The second time input's term added to the first layer of a time-embedding MLP.

    h (B,) (MeanFlow's h = t - r) gets its own embedding of the same ``kind`` and its own
    bias-free Dense(features); the result is added to Dense(embed(t)). That is exactly one Dense
    over the concatenation [embed(t), embed(h)] (so u(z, t, h) and u(z, h, t) differ, which a
    sum of the raw sinusoids would not allow). Returns 0.0 when ``enabled`` is False (and then
    h must be None). While initializing, a missing h is taken as zeros so that ``init`` with
    the usual (x, noise_cond, labels, train) arguments creates the h parameters too.
    """
    if not enabled:
        if h_B is not None:
            raise ValueError(
                "this network has no second time input: set model.second_time_input=True "
                "to pass h (e.g. MeanFlow's t - r)"
            )
        return 0.0
    if h_B is None:
        if not module.is_initializing():
            raise ValueError(
                "this network takes a second time input (model.second_time_input=True): "
                "pass h of shape (batch,)"
            )
        h_B = jnp.zeros((batch_size,), jnp.float32)
    if h_B.shape != (batch_size,):
        raise ValueError(f"h must have shape ({batch_size},), got {h_B.shape}")
    emb = embed_time(
        kind,
        h_B,
        dim,
        fourier_scale=fourier_scale,
        endpoint=endpoint,
        sin_first=sin_first,
        name="h_embedding" if kind == "fourier" else None,
    )
    return nn.Dense(features, use_bias=False, kernel_init=kernel_init, name="h_embedding_proj")(emb)


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
