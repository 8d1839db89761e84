"""A two-network method for the conformance harness: a GAN on the 2-D toys.

Not shipped with cmjax; docs/architecture.md walks through it as the worked example of the
several-networks seam. It uses every part of the seam:

- the generator G (``config.model``) maps noise z ~ N(0, I) to a sample x = G(z, c=0); the
  samplers, EMA and checkpoints treat it as any generator;
- a trained discriminator D (``config.networks.discriminator``: its own model, optimizer and
  no EMA), whose logit is the first output of an MLP;
- alternating updates (``players``): G on even steps, D on odd steps, inside one jitted step;
- method state: LeCam et al. 2021's EMAs of D's mean logits on real and fake samples (rate
  ``lecam_rate``), updated after D's update and used by D's regularizer
  lambda (||D(real) - ema_fake||^2 + ||D(fake) - ema_real||^2).

Losses (non-saturating): D: softplus(-D(real)) + softplus(D(fake)) + LeCam; G: softplus(-D(G(z))).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from ml_collections import config_dict

from cmjax.config import load_config
from cmjax.config.sections import objective_section, optim_section, sampling_section
from cmjax.objectives import GENERATOR, Nets, Objective, Player, SamplerPlan, register_objective

DISCRIMINATOR = "discriminator"


@register_objective
@dataclasses.dataclass(frozen=True)
class ToyGAN(Objective):
    """A non-saturating GAN with a LeCam regularizer; G and D alternate every step."""

    name: ClassVar[str] = "toy_gan"
    NETWORKS: ClassVar[tuple[str, ...]] = (DISCRIMINATOR,)

    lecam_weight: float = 0.1
    lecam_rate: float = 0.99

    def players(self) -> tuple[Player, ...]:
        return (Player(GENERATOR, every=2, offset=0), Player(DISCRIMINATOR, every=2, offset=1))

    def generate(self, apply_fn, params, z: jax.Array, labels=None) -> jax.Array:
        """x = G(z, 0): (B, D)."""
        return apply_fn({"params": params}, z, jnp.zeros(z.shape[:1]), labels, False)

    def logit(self, apply_fn, params, x: jax.Array) -> jax.Array:
        """D(x): (B,)."""
        return apply_fn({"params": params}, x, jnp.zeros(x.shape[:1]), None, False)[:, 0]

    def init_method_state(self, params: Mapping[str, Any], rng: jax.Array) -> Any:
        del params, rng
        return {"ema_real": jnp.zeros((), jnp.float32), "ema_fake": jnp.zeros((), jnp.float32)}

    def player_loss(self, player, params, nets: Nets, batch, rng, step):
        del step
        real = batch["x"]
        z = jax.random.normal(rng, real.shape, jnp.float32)
        if player == GENERATOR:
            fake = self.generate(nets.apply[GENERATOR], params, z)
            logit = self.logit(nets.apply[DISCRIMINATOR], nets.params[DISCRIMINATOR], fake)
            return jax.nn.softplus(-logit), {"g_logit": jnp.mean(logit)}
        generator = nets.params[GENERATOR]
        fake = jax.lax.stop_gradient(self.generate(nets.apply[GENERATOR], generator, z))
        d_real = self.logit(nets.apply[DISCRIMINATOR], params, real)
        d_fake = self.logit(nets.apply[DISCRIMINATOR], params, fake)
        ema = nets.method_state
        lecam = jnp.square(d_real - ema["ema_fake"]) + jnp.square(d_fake - ema["ema_real"])
        loss = jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake) + self.lecam_weight * lecam
        return loss, {"d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}

    def update_method_state(self, method_state, player, params, step, metrics):
        """After D's update: the EMAs of its mean logits on this step's real and fake data."""
        del params, step
        if player != DISCRIMINATOR:
            return method_state
        r = self.lecam_rate
        return {
            "ema_real": r * method_state["ema_real"] + (1 - r) * metrics["d_real"],
            "ema_fake": r * method_state["ema_fake"] + (1 - r) * metrics["d_fake"],
        }

    # -- sampling ---------------------------------------------------------------------------
    def sampler_plans(self) -> dict[str, SamplerPlan]:
        return {"1step": self.plan(1)}

    def plan(self, steps: int | None = None, times: Sequence[float] | None = None, method=None):
        if (steps or 1) != 1 or times is not None or method not in (None, "gan"):
            raise ValueError("a GAN samples in one step")
        return SamplerPlan("gan", (1.0,), 1)

    def sample(self, apply_fn, net_params, rng, shape, plan, labels=None) -> jax.Array:
        return self.generate(apply_fn, net_params, jax.random.normal(rng, shape), labels)


def toy_gan_config(hidden: int = 32, steps: int = 8, batch: int = 64) -> config_dict.ConfigDict:
    """The two-moons toy with ToyGAN: an MLP generator and an MLP discriminator."""
    config = load_config("toy2d:two_moons")
    config.model.update(hidden=hidden, depth=2)
    config.objective = objective_section("toy_gan")
    config.sampling = sampling_section("toy_gan")
    config.training.update(total_steps=steps, batch_size=batch)
    config.optim = optim_section(name="adam", learning_rate=2e-4, b1=0.5, b2=0.9)
    config.networks = config_dict.ConfigDict(
        {
            DISCRIMINATOR: dict(
                model=dict(config.model),
                optim=optim_section(name="adam", learning_rate=4e-4, b1=0.5, b2=0.9),
            )
        }
    )
    return config
