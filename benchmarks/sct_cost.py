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

from cmjax.config import TrainHParams, load_config  # noqa: E402
from cmjax.core import parallel  # noqa: E402
from cmjax.core.step import make_train_step  # noqa: E402
from cmjax.objectives import FrozenNetwork  # noqa: E402

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


def hparams_for(objective: str, model: str, batch: int) -> TrainHParams:
    name = {"ict": "cifar10_trigflow", "trigflow": "cifar10_trigflow"}.get(
        objective, f"cifar10_{objective}"
    )
    config = load_config(name)
    if objective == "ict":
        from cmjax.config.sections import add_run_sections, objective_section

        config.objective = objective_section("ict")
        add_run_sections(config, sampling=dict(two_step_sigma=0.821))
    config.model.update(MODELS[model])
    config.training.batch_size = batch
    return TrainHParams.from_config(config)


def step_flops(hp: TrainHParams, batch: int, teacher: TrainHParams) -> float:
    """FLOPs of one compiled train step on an abstract state; the frozen networks the
    objective reads (sCD's teacher) are ``teacher``'s network, abstract too."""
    frozen_nets = {
        name: FrozenNetwork.from_hparams(teacher) for name in hp.objective.frozen_networks()
    }
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    abstract = parallel.abstract_train_state(hp, mesh, frozen_nets)
    x = jax.ShapeDtypeStruct((batch, *hp.data_shape), jnp.float32)
    compiled = jax.jit(make_train_step(hp)).lower(abstract, {"x": x}, jax.random.key(0)).compile()
    return float(compiled.cost_analysis()["flops"])


def forward_flops(hp: TrainHParams, batch: int) -> float:
    model = hp.model
    x = jax.ShapeDtypeStruct((batch, *hp.data_shape), jnp.float32)
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
    trigflow = hparams_for("trigflow", args.model, args.batch)  # also sCD's teacher
    unit = forward_flops(trigflow, args.batch)
    rows = [("forward pass (train mode)", unit)]
    for objective in ("ict", "trigflow", "sct", "scd"):
        hp = hparams_for(objective, args.model, args.batch)
        rows.append((objective, step_flops(hp, args.batch, trigflow)))
    ict = rows[1][1]
    print(f"| {args.model}, batch {args.batch} | GFLOPs per step | / iCT step | / forward |")
    print("| --- | --- | --- | --- |")
    for name, flops in rows:
        print(f"| {name} | {flops / 1e9:.3f} | {flops / ict:.2f} | {flops / unit:.2f} |")


if __name__ == "__main__":
    main()
