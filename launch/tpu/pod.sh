#!/usr/bin/env bash
# create -> setup -> run -> delete a TPU VM slice in one command. See docs/scale_out.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
JX_UNKNOWN_HINT=" (launcher arguments go after --)"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

KEEP=${JAXSLM_KEEP:-0}
common=()
create=()
setup=()
run=()
launcher=()

usage() {
  cat <<EOF
Usage: launch/tpu/pod.sh --name NAME --zone ZONE [flags] -- LAUNCHER [ARGS...]

One run on a fresh slice: create.sh, setup.sh, run.sh, then delete.sh, which
runs on any exit once the slice exists (success, failure, Ctrl-C) unless --keep.
All arguments are checked before anything is created. The exit status is the
run's.

Flags of create.sh:  --accelerator-type --version --pricing --spot --preemptible
Flags of setup.sh:   --repo --ref --python --jax --extra-packages --no-check
Flags of both setup.sh and run.sh: --dir --worker
Flags of run.sh:     --env --log --log-dir --no-prefix
(see each script's --help; their environment variables apply too)
  --keep             do not delete the slice at the end. Env JAXSLM_KEEP=1.

$JX_TPU_COMMON_HELP

Example:
  launch/tpu/pod.sh --name slm-v5e --zone us-west4-a --accelerator-type v5litepod-16 --spot \\
    --log runs/slm26m.log -- launch/pretrain.py --config configs/slm26m_owt.py --workdir /mnt/runs/slm26m
EOF
}

while (($#)); do
  name=${1%%=*}
  case $name in
    --)
      shift
      launcher=("$@")
      break
      ;;
    --name | --zone | --project) jx_take "$@"; common+=("$name=$JX_VALUE") ;;
    --dry-run) JX_DRY_RUN=1; JX_SHIFT=1 ;;
    -h | --help) usage; exit 0 ;;
    --keep) KEEP=1; JX_SHIFT=1 ;;
    --accelerator-type | --version | --pricing) jx_take "$@"; create+=("$name=$JX_VALUE") ;;
    --spot | --preemptible) create+=("$1"); JX_SHIFT=1 ;;
    --repo | --ref | --python | --jax | --extra-packages) jx_take "$@"; setup+=("$name=$JX_VALUE") ;;
    --no-check) setup+=("$1"); JX_SHIFT=1 ;;
    --dir | --worker) jx_take "$@"; setup+=("$name=$JX_VALUE"); run+=("$name=$JX_VALUE") ;;
    --env | --log | --log-dir) jx_take "$@"; run+=("$name=$JX_VALUE") ;;
    --no-prefix) run+=("$1"); JX_SHIFT=1 ;;
    *) jx_unknown "$1" ;;
  esac
  shift "$JX_SHIFT"
done
if ((${#launcher[@]} == 0)); then
  jx_die "no launcher given: put it and its arguments after --, e.g. -- launch/pretrain.py --config configs/tiny.py --workdir runs/x"
fi

dry=()
if [[ $JX_DRY_RUN == 1 ]]; then
  dry=(--dry-run)
fi
step() { # step SCRIPT ARGS...: run one of the sibling scripts with the common flags
  local script=$1
  shift
  "$HERE/$script" ${common[@]+"${common[@]}"} ${dry[@]+"${dry[@]}"} "$@"
}
create_step() { step create.sh ${create[@]+"${create[@]}"}; }
setup_step() { step setup.sh ${setup[@]+"${setup[@]}"}; }
run_step() { step run.sh ${run[@]+"${run[@]}"} -- "${launcher[@]}"; }
delete_step() { step delete.sh; }

# Check every step's arguments before paying for a slice (prints nothing).
if [[ $JX_DRY_RUN != 1 ]]; then
  jx_need_gcloud
  dry=(--dry-run)
  for check in create_step setup_step run_step delete_step; do
    if ! errors=$("$check" 2>&1 >/dev/null); then
      printf '%s\n' "$errors" >&2
      exit 2
    fi
  done
  dry=()
fi

create_step
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $KEEP == 1 ]]; then
    jx_note "keeping the slice (--keep); delete it with: $HERE/delete.sh $(jx_show ${common[@]+"${common[@]}"})"
  else
    delete_step || jx_note "warning: deleting the slice failed; delete it by hand: $HERE/delete.sh $(jx_show ${common[@]+"${common[@]}"})"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
setup_step
run_step
