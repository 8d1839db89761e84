"""Minibatch optimal-transport pairing of data and noise (iLCT, Dao et al. 2025).

Before noising, the batch's Gaussian noise vectors are permuted so that the total squared
Euclidean distance sum_b ||x_b - z_perm(b)||^2 is minimal: an exact assignment on the batch,
solved inside the jitted step by optax's Hungarian algorithm (``optax.assignment``,
jit-compatible, O(B^3)). The per-example noise marginal stays N(0, I): a permutation of i.i.d.
draws chosen independently of their values' order is still i.i.d.; only the coupling changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax import assignment


def pairwise_sq_dists(x_BxD: jax.Array, z_BxD: jax.Array) -> jax.Array:
    """C[i, j] = ||x_i - z_j||^2, (B, B) float32, for flattened examples."""
    x = x_BxD.reshape(x_BxD.shape[0], -1).astype(jnp.float32)
    z = z_BxD.reshape(z_BxD.shape[0], -1).astype(jnp.float32)
    # The direct difference (not |x|^2 + |z|^2 - 2 x.z): exact ordering for small batches
    # matters more than the B x B x D memory, which stays small for minibatches.
    if x.shape[0] * x.shape[0] * x.shape[1] <= 2**26:
        return jnp.sum(jnp.square(x[:, None, :] - z[None, :, :]), axis=-1)
    sq = jnp.sum(x * x, 1)[:, None] + jnp.sum(z * z, 1)[None, :] - 2.0 * x @ z.T
    return jnp.maximum(sq, 0.0)


def ot_permutation(x: jax.Array, z: jax.Array) -> jax.Array:
    """perm (B,) int32 minimizing sum_b ||x_b - z_perm[b]||^2 over permutations."""
    cost = pairwise_sq_dists(x, z)
    rows, cols = assignment.hungarian_algorithm(cost)
    # rows is a permutation of 0..B-1 for a square cost; order the columns by row.
    return jnp.zeros(x.shape[0], jnp.int32).at[rows].set(cols.astype(jnp.int32))


def ot_pair_noise(x: jax.Array, z: jax.Array) -> jax.Array:
    """``z`` reordered along the batch axis to the OT pairing with ``x``; same shape."""
    return jnp.take(z, ot_permutation(x, z), axis=0)
