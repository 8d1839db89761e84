#!/usr/bin/env bash
# Cloud TPU VMs and pods with queued resources: create, set up, run, stream logs, delete.
#
#   launch/tpu_pod.sh create --name NAME --zone ZONE --accelerator v5p-64 \
#       --runtime v2-alpha-tpuv5 [--spot | --reserved] [--project P] [--dry-run]
#   launch/tpu_pod.sh setup  --name NAME --zone ZONE --repo GIT_URL [--ref REF] [--dry-run]
#   launch/tpu_pod.sh run    --name NAME --zone ZONE --config configs/x.py[:variant] \
#       --workdir gs://BUCKET/DIR [--worker all] [--dry-run] [-- --config.a.b=v ...]
#   launch/tpu_pod.sh logs   --name NAME --zone ZONE [--worker 0] [--dry-run]
#   launch/tpu_pod.sh delete --name NAME --zone ZONE [--dry-run]
#
# --dry-run prints the exact gcloud commands instead of running them. `run` starts the same
# training command on every worker (jax.distributed finds the pod by itself), detached with
# nohup so it survives the ssh session; its output goes to ~/cmjax.log on each worker.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; echo >&2; usage >&2; exit 2; }

[[ $# -ge 1 ]] || die "missing action"
action=$1; shift
case "$action" in -h|--help) usage; exit 0 ;; create|setup|run|logs|delete) ;;
  *) die "unknown action '$action'" ;; esac

name="" zone="" accelerator="" runtime="" project="" mode="" config="" workdir=""
worker="all" repo="" ref="main" dry_run=0 extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --accelerator) accelerator=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --spot) mode=spot; shift ;;
    --reserved) mode=reserved; shift ;;
    --config) config=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --worker) worker=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ -n $name ]] || die "--name is required"
[[ -n $zone ]] || die "--zone is required"

gcloud_cmd() {
  local cmd=(gcloud "$@")
  [[ -n $project ]] && cmd+=(--project "$project")
  if [[ $dry_run == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; else "${cmd[@]}"; fi
}

ssh_all() {  # ssh_all WORKER COMMAND
  gcloud_cmd compute tpus tpu-vm ssh "$name" --zone "$zone" --worker "$1" --command "$2"
}

case "$action" in
  create)
    [[ -n $accelerator ]] || die "--accelerator is required (e.g. v5p-64, v4-8)"
    [[ -n $runtime ]] || die "--runtime is required (e.g. v2-alpha-tpuv5, tpu-ubuntu2204-base)"
    args=(compute tpus queued-resources create "$name" --node-id "$name" --zone "$zone"
          --accelerator-type "$accelerator" --runtime-version "$runtime")
    [[ $mode == spot ]] && args+=(--spot)
    [[ $mode == reserved ]] && args+=(--reserved)
    gcloud_cmd "${args[@]}"
    ;;
  setup)
    [[ -n $repo ]] || die "--repo is required (the git URL of your cmjax checkout)"
    ssh_all all "set -e; if [ ! -d cmjax ]; then git clone $repo cmjax; fi; cd cmjax && git fetch -q && git checkout -q $ref && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
    ;;
  run)
    [[ -n $config ]] || die "--config is required"
    [[ -n $workdir ]] || die "--workdir is required (a gs:// bucket shared by all workers)"
    [[ $workdir == gs://* ]] || die "--workdir must be a gs:// path on a pod: every worker writes there"
    train="cd cmjax && nohup .venv/bin/cmjax-train --config=$config --workdir=$workdir"
    for arg in "${extra[@]}"; do train+=" $(printf '%q' "$arg")"; done
    ssh_all "$worker" "$train > ~/cmjax.log 2>&1 &"
    ;;
  logs)
    [[ $worker == all ]] && worker=0
    ssh_all "$worker" "tail -n 200 -f ~/cmjax.log"
    ;;
  delete)
    gcloud_cmd compute tpus queued-resources delete "$name" --zone "$zone" --force --quiet
    ;;
esac
