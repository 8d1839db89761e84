"""XLA FLOPs of one training step per objective on the same network: the cost of sCT's jvp.

Compiles (never runs) ``make_train_step`` for iCT, TrigFlow, sCT and sCD on abstract states
(nothing is allocated) and prints XLA's ``cost_analysis()`` FLOPs per step, relative to iCT
(two forward passes, one backward). A forward pass alone is printed as the unit.

    python benchmarks/sct_cost.py --model ddpmpp-tiny --batch 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cmjax.config_loading import load_config  # noqa: E402
from cmjax.models import build_model  # noqa: E402
from cmjax.train_state import create_train_state  # noqa: E402
from cmjax.train_step import make_train_step  # noqa: E402

MODELS = {
    # CIFAR-10 DDPM++ (EDM's, 55.7 M parameters) as configs/cifar10_sct.py uses it.
    "ddpmpp": {},
    # The same code at the configs' tiny width (compiles quickly on a loaded CPU).
    "ddpmpp-tiny": dict(
        model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(16,)
    ),
    # The same code at a small width.
    "ddpmpp-small": dict(
        model_channels=32, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(16,)
    ),
}


def config_for(objective: str, model: str, batch: int):
    name = {"ict": "cifar10_trigflow", "trigflow": "cifar10_trigflow"}.get(
        objective, f"cifar10_{objective}"
    )
    config = load_config(name)
    if objective == "ict":
        from cmjax.config_defaults import add_run_sections, objective_section

        config.objective = objective_section("ict")
        add_run_sections(config, two_step_sigma=0.821)
    config.model.update(MODELS[model])
    config.training.batch_size = batch
    return config


def step_flops(config, batch: int) -> float:
    abstract = jax.eval_shape(
        lambda r: create_train_state(config, r, load_frozen=False), jax.random.key(0)
    )
    x = jax.ShapeDtypeStruct((batch, *config.data.shape), jnp.float32)
    compiled = (
        jax.jit(make_train_step(config)).lower(abstract, {"x": x}, jax.random.key(0)).compile()
    )
    return float(compiled.cost_analysis()["flops"])


def forward_flops(config, batch: int) -> float:
    model = build_model(config.model)
    x = jax.ShapeDtypeStruct((batch, *config.data.shape), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), jnp.zeros(t.shape))
    )

    def fwd(v, x, t):
        return model.apply(v, x, t, None, True, rngs={"dropout": jax.random.key(1)})

    return float(jax.jit(fwd).lower(variables, x, t).compile().cost_analysis()["flops"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="ddpmpp-tiny")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    unit = forward_flops(config_for("trigflow", args.model, args.batch), args.batch)
    rows = [("forward pass (train mode)", unit)]
    for objective in ("ict", "trigflow", "sct", "scd"):
        rows.append(
            (objective, step_flops(config_for(objective, args.model, args.batch), args.batch))
        )
    ict = rows[1][1]
    print(f"| {args.model}, batch {args.batch} | GFLOPs per step | / iCT step | / forward |")
    print("| --- | --- | --- | --- |")
    for name, flops in rows:
        print(f"| {name} | {flops / 1e9:.3f} | {flops / ict:.2f} | {flops / unit:.2f} |")


if __name__ == "__main__":
    main()
