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

from cmjax import TrainHParams, create_train_state, make_train_step
from cmjax.config_loading import load_config
from cmjax.data import make_dataset
from cmjax.images import make_grid, plot_curve, save_png, to_uint8
from cmjax.sampling import sample

steps = int(os.environ.get("CMJAX_QUICKSTART_STEPS", "1500"))
out_dir = Path(os.environ.get("CMJAX_QUICKSTART_OUT", "quickstart_out"))

# %% [markdown]
# A config is an ml_collections ConfigDict; the hyperparameters the step uses are frozen
# once into `TrainHParams`.

# %%
config = load_config("configs/default.py")
config.training.total_steps = steps
hp = TrainHParams.from_config(config)
print(hp.objective)  # the iCT objective: grid, curriculum, loss constants

# %%
state = create_train_state(config, jax.random.key(config.seed))
train_step = jax.jit(make_train_step(config), donate_argnums=0)
dataset = make_dataset(config)  # batch(step) is a pure function of (seed, step)

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
