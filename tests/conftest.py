"""Test setup: 8 fake CPU devices (set before JAX is imported) and tiny configs."""

import os
import sys

# Compile for compile time: the tests' networks are tiny and most tests run a few steps, so
# LLVM's optimization passes (about 5x the rest of a compile on 2 cores) cost far more than
# they save. Level 0 changes float rounding, not semantics; every assertion holds at any level.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" {TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402


def _shared_compilation_cache() -> str:
    """One persistent XLA compilation cache for the whole test run: every pytest-xdist worker
    and every CLI subprocess the tests start (they inherit the environment) reuses a program
    another one already compiled (the tiny toy steps, the Inception network, the samplers).
    A cache hit returns the same executable, so no asserted number changes. Workers of one run
    share ``PYTEST_XDIST_TESTRUNUID``; a serial run gets its own directory."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run:
        path = os.path.join(tempfile.gettempdir(), f"cmjax-tests-xla-cache-{run}")
        os.makedirs(path, exist_ok=True)
        return path
    return tempfile.mkdtemp(prefix="cmjax-tests-xla-cache-")


if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _shared_compilation_cache()
    os.environ["CMJAX_TESTS_OWN_XLA_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session):
    """The controller (or a serial run) removes the cache directory it made."""
    own = os.environ.get("CMJAX_TESTS_OWN_XLA_CACHE")
    if own and not hasattr(session.config, "workerinput"):
        shutil.rmtree(own, ignore_errors=True)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))


@pytest.fixture
def toy_config():
    """The 2-D toy config shrunk for tests."""
    import toy2d

    config = toy2d.get_config()
    config.model.hidden = 32
    config.model.depth = 2
    config.training.batch_size = 64
    config.training.total_steps = 100
    return config


@pytest.fixture
def image_config():
    """A tiny 8x8x3 image config with the small UNet and dropout on."""
    import toy2d

    config = toy2d.get_config()
    config.data.shape = (8, 8, 3)
    config.model = dict(
        name="unet_small",
        channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        num_fourier=8,
        fourier_scale=16.0,
        dropout=0.3,
        num_classes=0,
        noise_cond_scale=1.0,
    )
    config.training.batch_size = 16
    config.training.total_steps = 100
    return config


def compiled(jitted, *args, level: int = 1):
    """``jitted`` compiled for ``args`` with LLVM at ``level`` (1), for a test that runs a
    program hundreds of times: the suite compiles at level 0 (TEST_XLA_FLAGS), whose code
    runs ~2.5x slower (a toy MLP step: 17 ms vs 6.7 ms for 0.4 s more compile). Only the
    rounding of the floats can differ, never what is computed."""
    return jitted.lower(*args).compile(compiler_options={"xla_backend_optimization_level": level})


def dataset(config_or_hparams):
    """The training Dataset of a config (or of its TrainHParams), as the loop builds it."""
    from cmjax.config import TrainHParams
    from cmjax.data import make_dataset

    hp = config_or_hparams
    if not isinstance(hp, TrainHParams):
        hp = TrainHParams.from_config(hp)
    return make_dataset(hp.data, hp.training.batch_size, hp.seed)


def save_run(workdir, state, config, step=None, frozen=None) -> str:
    """Save ``state`` as the one checkpoint of the work directory ``workdir``, as
    ``cmjax-train`` leaves it (``frozen``: the records of its frozen networks)."""
    import jax

    from cmjax.workdir.checkpoint import Checkpointer

    step = int(jax.device_get(state.step)) if step is None else step
    checkpointer = Checkpointer(workdir, async_save=False)
    checkpointer.save(step, state, config, force=True, frozen=frozen)
    checkpointer.wait_until_finished()
    checkpointer.close()
    return str(workdir)


def _train_toy(workdir, objective: str, hidden: int, depth: int, steps: int) -> str:
    """A toy2d:two_moons,<objective> run (MLP hidden x depth) trained ``steps`` steps and saved
    as a work directory (one orbax checkpoint with its config), as ``cmjax-train`` leaves it."""
    import jax

    from cmjax import create_train_state, make_train_step
    from cmjax.config import load_config

    config = load_config(f"toy2d:two_moons,{objective}")
    config.model.update(hidden=hidden, depth=depth)
    config.training.update(total_steps=steps, batch_size=256)
    state = create_train_state(config, jax.random.key(0))
    data = dataset(config)
    step = compiled(jax.jit(make_train_step(config), donate_argnums=0), state, data.batch(0))
    for k in range(steps):
        state, _ = step(state, data.batch(k))
    return save_run(workdir, state, config, steps)


@pytest.fixture(scope="session")
def toy_teacher(tmp_path_factory):
    """``make(objective, hidden=32, depth=2, steps=20)`` -> the work directory of a two-moons
    toy run of ``objective`` (a teacher: trigflow or flow for sCD, edm for CD), trained once
    per session and setting."""
    cache = {}

    def make(objective: str, hidden: int = 32, depth: int = 2, steps: int = 20) -> str:
        key = (objective, hidden, depth, steps)
        if key not in cache:
            cache[key] = _train_toy(tmp_path_factory.mktemp(f"teacher_{objective}"), *key)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def trigflow_teacher(toy_teacher):
    """``make(hidden=32, depth=2, steps=20)`` -> a toy TrigFlow run's work directory."""
    return lambda hidden=32, depth=2, steps=20: toy_teacher("trigflow", hidden, depth, steps)
