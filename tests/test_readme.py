"""Every command in the README is exercised: python snippets run, CLI lines parse and their
configs validate, launch lines pass with --dry-run, and the main command trains."""

import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from absl import flags

from cmjax.config.hparams import validate_config
from cmjax.config.loading import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BASH_LINES = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    for line in block.splitlines()
    if line.strip()
]


def _commands(prefix):
    """The README's commands (inline code included) that start with ``prefix``."""
    inline = re.findall(r"`([^`\n]+)`", README)
    found = [c for c in BASH_LINES + inline if c.startswith(prefix)]
    for chained in BASH_LINES:  # "venv && pip && cmjax-train ..." set-up lines
        found += [p.strip() for p in chained.split("&&") if p.strip().startswith(prefix)]
    commands = {" ".join(shlex.split(c, comments=True)) for c in found}
    return sorted(c for c in commands if len(c.split()) > 1)  # not the bare name in prose


def test_readme_python_snippets_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README.md has no python example"
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, str(ROOT / "README.md"), "exec"), namespace)
        if "metrics" in namespace:
            assert float(namespace["metrics"]["loss"]) > 0
            assert int(namespace["state"].step) > 0


def _apply_override(config, arg):
    key, _, value = arg[len("--config.") :].partition("=")
    *path, leaf = key.split(".")
    node = config
    for p in path:
        node = node[p]
    old = node[leaf]
    node[leaf] = type(old)(value) if not isinstance(old, (tuple, list)) else old


@pytest.mark.parametrize("command", _commands("cmjax-train") + _commands(".venv/bin/cmjax-train"))
def test_readme_train_commands_have_valid_configs(command):
    args = shlex.split(command)[1:]
    spec = next(a for a in args if a.startswith("--config=")).split("=", 1)[1]
    config = load_config(spec.replace("configs/", "").replace(".py", "") or spec)
    for arg in args:
        if arg.startswith("--config."):
            _apply_override(config, arg)
    validate_config(config)
    assert any(a.startswith("--workdir=") for a in args)


ENTRY_POINTS = {
    "cmjax-sample": "cmjax.cli.sample",
    "cmjax-fid": "cmjax.cli.fid",
    "cmjax-combine": "cmjax.cli.combine",
    "cmjax-import": "cmjax.cli.import_checkpoint",
    "cmjax-prepare-imagenet": "cmjax.cli.prepare_imagenet",
    "cmjax-demo": "cmjax.cli.demo",
    "cmjax-compile": "cmjax.cli.compile",
}


@pytest.mark.parametrize("command", [c for p in ENTRY_POINTS for c in _commands(p)])
def test_readme_commands_use_existing_flags(command):
    args = shlex.split(command)
    entry = importlib.import_module(ENTRY_POINTS[args[0]]).COMMAND
    fv = flags.FlagValues()
    entry.define(fv, args[:1])
    for arg in args[1:]:
        assert arg.startswith("--")
        assert arg[2:].split("=")[0] in fv, arg


def test_readme_names_every_entry_point():
    for prog in ENTRY_POINTS:
        assert _commands(prog), prog


@pytest.mark.parametrize("command", _commands("launch/tpu_pod.sh") + _commands("launch/gpu_local"))
def test_readme_launch_commands_dry_run(command):
    args = shlex.split(command)
    if "--" in args:
        i = args.index("--")
        args = [*args[:i], "--dry-run", *args[i:]]
    else:
        args.append("--dry-run")
    r = subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_readme_main_command_trains_the_default(tmp_path, capsys, monkeypatch):
    """The README's main command, in-process as its console script runs it, shortened."""
    from cmjax.cli import train

    (command,) = _commands(".venv/bin/cmjax-train")
    args = shlex.split(command)[1:]
    assert args[0] == "--config=configs/default.py"
    monkeypatch.chdir(ROOT)
    code = train.COMMAND(
        [
            "cmjax-train",
            args[0],
            f"--workdir={tmp_path}",
            "--config.training.total_steps=3",
            "--config.training.sample_every=3",
            "--config.training.log_every=1",
            "--config.checkpoint.every_steps=3",
            "--config.eval.every_steps=0",  # the proxy: tests/test_digits_proxy.py
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "step 3/3" in out
    assert (tmp_path / "samples" / "samples_2step_00000003.png").is_file()
