#!/usr/bin/env bash
# Train on one host with one or more NVIDIA GPUs.
#
#   launch/gpu_local.sh --config configs/x.py[:variant] --workdir DIR [--gpus 0,1,2,3]
#       [--install] [--dry-run] [-- --config.a.b=v ...]
#
# --install first installs the project with the [cuda] extra into .venv. All visible GPUs
# form one mesh in one process (no jax.distributed needed). --dry-run prints the commands.
set -euo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; echo >&2; usage >&2; exit 2; }

config="" workdir="" gpus="" install=0 dry_run=0 extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --install) install=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ -n $config ]] || die "--config is required"
[[ -n $workdir ]] || die "--workdir is required"

run() { if [[ $dry_run == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }

cd "$(dirname "$0")/.."
if [[ $install == 1 ]]; then
  run python3 -m venv .venv
  run .venv/bin/pip install -e ".[cuda]"
fi
env_vars=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.95)
[[ -n $gpus ]] && env_vars+=("CUDA_VISIBLE_DEVICES=$gpus")
run env "${env_vars[@]}" .venv/bin/cmjax-train "--config=$config" "--workdir=$workdir" "${extra[@]}"
