"""Forward-pass FLOPs per image of the paper networks, from XLA's cost analysis.

    python benchmarks/model_flops.py [--dtype bfloat16]

Prints, for each full configuration, the parameter count, the forward FLOPs per image and
the FLOPs of one iCT training example (student forward + backward ~ 3x forward, plus the
teacher forward: ~4x forward). Nothing is allocated: parameters are abstract (eval_shape).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp

from cmjax.config import TrainHParams, load_config

CONFIGS = ("cifar10_ict", "cifar10_ict:deep", "imagenet64_ict", "imagenet64_ict:deep")


def forward_flops(spec: str, dtype: str, batch: int = 8) -> tuple[int, float]:
    """(parameter count, forward FLOPs per image) of a config's network."""
    config = load_config(spec)
    config.model.dtype = dtype
    hp = TrainHParams.from_config(config)
    model = hp.model
    shape = (batch, *hp.data_shape)
    labels = jnp.zeros((batch,), jnp.int32) if hp.num_classes else None
    cond = jnp.zeros((batch,))
    params = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(shape), cond, labels, False)
    )
    lowered = jax.jit(lambda p, x: model.apply(p, x, cond, labels, False)).lower(
        params, jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    cost = lowered.cost_analysis()
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return n_params, float(cost["flops"]) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, dtype {args.dtype}")
    print(f"{'config':24s} {'params':>13s} {'fwd GFLOP/img':>14s} {'train GFLOP/img':>16s}")
    for spec in CONFIGS:
        start = time.perf_counter()
        n, flops = forward_flops(spec, args.dtype)
        print(
            f"{spec:24s} {n:13,d} {flops / 1e9:14.1f} {4 * flops / 1e9:16.1f}"
            f"   ({time.perf_counter() - start:.1f}s)"
        )


if __name__ == "__main__":
    main()
