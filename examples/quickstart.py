# %% [markdown]
# # cmjax quickstart: iCT in a notebook
#
# Runs top to bottom on a laptop CPU in a few minutes (open it as a notebook with jupytext,
# or `python examples/quickstart.py`). We train a class-conditional consistency model of
# scikit-learn's 8x8 digits by calling the jitted `train_step` ourselves, plot the loss and
# look at 1- and 2-step samples.

# %%
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import cmjax
from cmjax.core.sampling import sample
from cmjax.data import make_dataset
from cmjax.images import make_grid, plot_curve, save_png, to_uint8

steps = int(os.environ.get("CMJAX_QUICKSTART_STEPS", "1500"))
out_dir = Path(os.environ.get("CMJAX_QUICKSTART_OUT", "quickstart_out"))

# %% [markdown]
# A config is an ml_collections ConfigDict; it is resolved once into frozen hyperparameters,
# `TrainHParams`, and everything below takes those.

# %%
config = cmjax.load_config("configs/default.py")
config.training.total_steps = steps
hp = cmjax.TrainHParams.from_config(config)
print(hp.objective)  # the iCT objective: grid, curriculum, loss constants

# %% [markdown]
# A method that reads frozen networks (sCD's teacher, ...) gets them with
# `frozen=cmjax.load_frozen(hp)`; iCT reads none, so that is `{}` here.

# %%
state = cmjax.create_train_state(hp, jax.random.key(hp.seed), frozen=cmjax.load_frozen(hp))
train_step = jax.jit(cmjax.make_train_step(hp), donate_argnums=0)
# batch(step) is a pure function of (seed, step)
dataset = make_dataset(hp.data, hp.training.batch_size, hp.seed)

losses = []
for step in range(steps):
    state, metrics = train_step(state, dataset.batch(step))
    losses.append(float(metrics["loss"]))
    if step % 250 == 0:
        print(f"step {step:5d}  loss {losses[-1]:.3f}  N {int(metrics['num_scales'])}")

# %% [markdown]
# The iCT loss is weighted by 1/(sigma_{i+1} - sigma_i), which grows each time the curriculum
# doubles N, so the curve steps up at every doubling and falls in between.

# %%
plot_curve(np.asarray(losses), out_dir / "loss.png", title="iCT loss")

# %%
labels = jnp.arange(100) % 10
grids = []
for name, plan in hp.objective.sampler_plans().items():  # "1step": [80], "2step": [80, 0.821]
    x = sample(
        hp.objective,
        state.apply_fn,
        state.ema_params[0],
        jax.random.key(1),
        (100, 8, 8, 1),
        plan,
        labels=labels,
    )
    grids.append(make_grid(to_uint8(np.asarray(x)), ncols=10))
    save_png(out_dir / f"samples_{name}.png", grids[-1], scale=4)
print("wrote", sorted(p.name for p in out_dir.iterdir()))
