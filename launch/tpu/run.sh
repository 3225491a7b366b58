#!/usr/bin/env bash
# Run a jaxslm launcher on every worker of a TPU VM slice. See docs/scale_out.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
JX_UNKNOWN_HINT=" (launcher arguments go after --)"

REMOTE_DIR=${JAXSLM_REMOTE_DIR:-jaxslm}
WORKER=${JAXSLM_TPU_WORKER:-all}
LOG=${JAXSLM_LOG:-}
LOG_DIR=${JAXSLM_LOG_DIR:-}
PREFIX=${JAXSLM_LOG_PREFIX:-1}
envs=()
launcher=()

usage() {
  cat <<EOF
Usage: launch/tpu/run.sh --name NAME --zone ZONE [flags] -- LAUNCHER [ARGS...]

Run "python LAUNCHER ARGS" with the venv that setup.sh made, in its directory,
on every worker at once: one JAX process per TPU VM host. No coordinator flags
are needed: on a slice JAX reads the hosts from the VM metadata. The arguments
after -- reach the workers exactly as given: each is quoted with printf %q.
Output of all workers streams back here, each line prefixed with the worker's
hostname; the exit status is non-zero if the run failed on any worker. Ctrl-C
stops the local ssh sessions; see docs/scale_out.md for stopping the remote
processes.

Flags:
  --dir DIR      jaxslm directory on the workers (as given to setup.sh).
                 Env JAXSLM_REMOTE_DIR; default jaxslm.
  --env K=V      set an environment variable for the launcher; repeatable
                 (e.g. --env JAXSLM_CACHE=/mnt/cache --env JAXSLM_DEBUG=1).
  --log FILE     also append everything to FILE on this machine. Env JAXSLM_LOG;
                 default none.
  --log-dir DIR  instead of streaming, have gcloud write each worker's output to
                 DIR/WORKER_ID.log (gcloud ssh --output-directory). Env JAXSLM_LOG_DIR.
  --no-prefix    do not prefix lines with the hostname. Env JAXSLM_LOG_PREFIX=0.
  --worker W     all, or one worker index. Env JAXSLM_TPU_WORKER; default all.
                 (A multi-host run needs all workers.)

$JX_TPU_COMMON_HELP

Example:
  launch/tpu/run.sh --name slm-v5e --zone us-west4-a --log runs/gpt2.log -- \\
    launch/pretrain.py --config configs/gpt2_124m_owt.py --workdir /mnt/runs/gpt2
EOF
}

while (($#)); do
  if [[ $1 == -- ]]; then
    shift
    launcher=("$@")
    break
  fi
  if ! jx_tpu_flag "$@"; then
    case $1 in
      --dir | --dir=*) jx_take "$@"; REMOTE_DIR=$JX_VALUE ;;
      --env | --env=*) jx_take "$@"; envs+=("$JX_VALUE") ;;
      --log | --log=*) jx_take "$@"; LOG=$JX_VALUE ;;
      --log-dir | --log-dir=*) jx_take "$@"; LOG_DIR=$JX_VALUE ;;
      --no-prefix) PREFIX=0; JX_SHIFT=1 ;;
      --worker | --worker=*) jx_take "$@"; WORKER=$JX_VALUE ;;
      *) jx_unknown "$1" ;;
    esac
  fi
  shift "$JX_SHIFT"
done

if ((${#launcher[@]} == 0)); then
  jx_die "no launcher given: put it and its arguments after --, e.g. -- launch/pretrain.py --config configs/tiny.py --workdir runs/x"
fi
for kv in ${envs[@]+"${envs[@]}"}; do
  if [[ ! $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    jx_die "--env needs NAME=VALUE, not '$kv'"
  fi
done
jx_require "$REMOTE_DIR" --dir JAXSLM_REMOTE_DIR
jx_require "$WORKER" --worker JAXSLM_TPU_WORKER
jx_tpu_check
jx_tpu_where
if [[ ${launcher[0]} == *.py && ! -e ${launcher[0]} ]]; then
  jx_note "note: ${launcher[0]} does not exist here; it must exist under $REMOTE_DIR on the workers"
fi

# The command each worker runs (bash, the login shell of TPU VM images).
remote="cd $(printf %q "$REMOTE_DIR") && export PYTHONUNBUFFERED=1"
if ((${#envs[@]})); then
  remote+=" $(jx_quote "${envs[@]}")"
fi
if [[ $PREFIX == 1 ]]; then
  # shellcheck disable=SC2016  # $HOSTNAME expands on the worker
  remote+=' && exec > >(sed -u "s/^/[$HOSTNAME] /") 2>&1'
fi
remote+=" && exec .venv/bin/python $(jx_quote "${launcher[@]}")"

cmd=("$JX_GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${JX_WHERE[@]}" "--worker=$WORKER" "--command=$remote")
if [[ -n $LOG_DIR ]]; then
  cmd+=("--output-directory=$LOG_DIR")
  if [[ $JX_DRY_RUN != 1 ]]; then
    mkdir -p "$LOG_DIR"
  fi
fi
if [[ -n $LOG && $JX_DRY_RUN != 1 ]]; then
  mkdir -p "$(dirname "$LOG")"
  jx_note "appending the output to $LOG"
  jx_run "${cmd[@]}" 2>&1 | tee -a "$LOG"
else
  jx_run "${cmd[@]}"
fi
