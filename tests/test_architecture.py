"""The package's shape, as docs/architecture.md draws it: no import cycle among cmjax's
modules (imports inside functions counted), no module importing from a layer above its own,
``import cmjax`` without JAX, and one resolution of the config per training run."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from cmjax.config import TrainHParams, load_config
from cmjax.training.loop import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cmjax"

# Lowest first; a module's layer is that of the longest prefix that names it. Within a layer,
# modules may import each other (the cycle check still applies); never one from a layer above.
LAYERS = [
    ("cmjax.errors", 0),  # every user-facing error; imports nothing of cmjax
    ("cmjax.images", 0),
    ("cmjax.models", 1),  # networks
    ("cmjax.data", 1),  # sources, the step-indexed pipeline, DataHParams
    ("cmjax.evaluation.fid", 1),  # measures of samples: no run, no state
    ("cmjax.evaluation.inception", 1),
    ("cmjax.evaluation.digits_proxy", 1),
    ("cmjax.evaluation.sliced_wasserstein", 1),
    ("cmjax.importers.torch_pickle", 1),  # a safe reader of files, nothing else
    ("cmjax.objectives", 2),  # the seam and every objective: pure math on networks
    ("cmjax.config", 3),  # config files -> TrainHParams (the one resolution)
    ("cmjax.core", 4),  # state, step, shardings, samplers: pure, jittable
    ("cmjax.workdir", 5),  # checkpoints, locks, reading runs, frozen networks, init_from
    ("cmjax.evaluation", 6),  # metrics of a run and the in-loop evaluator
    ("cmjax.importers", 6),  # published checkpoints -> work directories
    ("cmjax.lcsc", 6),  # checkpoint combination
    ("cmjax.training", 7),  # the loop: the one impure module and its helpers
    ("cmjax.cli", 8),  # every entry point, through one runner
    ("cmjax", 9),  # the package face (lazy re-exports)
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """cmjax module -> the cmjax modules it imports (anywhere in it, functions included)."""
    graph = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [s if s in modules else node.module for s in subs]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("cmjax"):
                    graph[name].add(target)
    return graph


def layer(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def test_no_import_cycle_among_cmjax_modules():
    modules = _modules()
    graph = _imports(modules)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_no_module_imports_from_a_layer_above_it():
    modules = _modules()
    graph = _imports(modules)
    upward = [
        f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
        for m in sorted(graph)
        for t in sorted(graph[m])
        if layer(t) > layer(m)
    ]
    assert not upward, upward
    assert len(modules) > 40  # the check saw the whole package


def test_every_module_has_a_layer_and_the_top_level_is_small():
    for module in _modules():
        layer(module)  # raises if no prefix names it
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "errors.py", "images.py"], top


def test_import_cmjax_is_light():
    heavy = "('jax', 'flax', 'tensorflow', 'orbax')"
    code = f"import cmjax, sys; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    names = {"TrainHParams", "create_train_state", "make_train_step", "load_frozen", "read_run"}
    assert names <= set(dir(__import__("cmjax")))


@pytest.fixture
def resolutions(monkeypatch):
    """Counts TrainHParams.from_config calls (every resolution of a config goes through it)."""
    calls = []
    original = TrainHParams.from_config.__func__

    def counting(cls, config):
        calls.append(dict(config).get("objective", {}).get("name"))
        return original(cls, config)

    monkeypatch.setattr(TrainHParams, "from_config", classmethod(counting))
    return calls


def test_a_training_run_resolves_its_config_once(tmp_path, resolutions):
    """A toy run with two in-loop evaluations, two checkpoints and a resume: the loop resolves
    the config once per run, the evaluator, samplers, state and step take its hyperparameters."""
    config = load_config("toy2d")
    config.model.update(hidden=16, depth=1)
    config.training.update(total_steps=4, batch_size=64, log_every=2)
    config.checkpoint.update(every_steps=2)
    config.eval.update(every_steps=2, num_samples=64)
    train_and_evaluate(config, tmp_path)
    assert resolutions == ["ict"]
    config.training.total_steps = 6
    train_and_evaluate(config, tmp_path)  # resumes at 4
    assert resolutions == ["ict", "ict"]


def test_an_scd_run_resolves_its_config_and_its_teachers_once(
    tmp_path, resolutions, trigflow_teacher
):
    """sCD: its own config once, and the teacher's saved config once (to build the teacher's
    network), also on a resume, where the teacher's config comes from the checkpoint."""
    teacher = trigflow_teacher(hidden=32, depth=2)
    resolutions.clear()
    config = load_config("toy2d:two_moons,scd")
    config.model.update(hidden=32, depth=2)
    config.objective.teacher = teacher
    config.training.update(total_steps=2, batch_size=64)
    config.checkpoint.update(every_steps=2)
    config.eval.every_steps = 0
    train_and_evaluate(config, tmp_path)
    assert resolutions == ["scd", "trigflow"]
    resolutions.clear()
    config.training.total_steps = 3
    train_and_evaluate(config, tmp_path)
    assert resolutions == ["scd", "trigflow"]
