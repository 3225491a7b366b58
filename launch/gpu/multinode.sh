#!/usr/bin/env bash
# Start one jaxslm process with an explicit coordinator (any cluster, or
# several processes on this machine). See docs/scale_out.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
JX_UNKNOWN_HINT=" (launcher arguments go after --)"

COORDINATOR=${JAXSLM_COORDINATOR:-}
NUM_PROCESSES=${JAXSLM_NUM_PROCESSES:-}
PROCESS_ID=${JAXSLM_PROCESS_ID:-}
PYTHON=${JAXSLM_PYTHON:-python3}
LOCAL=0
PROCESS_ID_FLAG=0
launcher=()

usage() {
  cat <<EOF
Usage: launch/gpu/multinode.sh --coordinator HOST:PORT --num-processes N --process-id I
                               [flags] -- LAUNCHER [ARGS...]
       launch/gpu/multinode.sh --local --num-processes N [flags] -- LAUNCHER [ARGS...]

Run "PYTHON LAUNCHER ARGS" as process I of N of one multi-host JAX run: it sets
JAXSLM_COORDINATOR, JAXSLM_NUM_PROCESSES and JAXSLM_PROCESS_ID, which the
launchers pass to jax.distributed.initialize(), and execs the launcher. Run it
once on every node, with the same coordinator (the address of process 0's
node, a free port) and arguments, and process ids 0..N-1. Each process uses all
the GPUs (or TPU chips) of its node. Under SLURM use slurm.sbatch instead;
on Cloud TPU use launch/tpu/run.sh: both need no coordinator.

Flags (a flag wins over its environment variable):
  --coordinator HOST:PORT  process 0's address. Env JAXSLM_COORDINATOR; required
                           (with --local: default localhost:12355).
  --num-processes N        number of processes. Env JAXSLM_NUM_PROCESSES; required.
  --process-id I           this process, 0..N-1. Env JAXSLM_PROCESS_ID; required
                           (not with --local).
  --local                  start all N processes here, in the background, and wait
                           for them; if one fails the others are stopped. For
                           testing multi-host code on one machine.
  --python PYTHON          interpreter. Env JAXSLM_PYTHON; default python3.
  --dry-run                print the command(s) instead (one per line, '+ ' first).
                           Env JAXSLM_DRY_RUN=1.
  -h, --help               this help.

Two processes on the CPU of this machine, 4 devices each (8 in all):
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
    launch/gpu/multinode.sh --local --num-processes 2 -- \\
    launch/pretrain.py --config configs/tiny.py --workdir runs/two_process
(cross-process collectives on CPU use gloo: with JAX_PLATFORMS=cpu this script
sets JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo unless it is already set.)

Two GPU nodes, node0 and node1:
  node0$ launch/gpu/multinode.sh --coordinator node0:12355 --num-processes 2 --process-id 0 -- launch/pretrain.py ...
  node1$ launch/gpu/multinode.sh --coordinator node0:12355 --num-processes 2 --process-id 1 -- launch/pretrain.py ...
EOF
}

while (($#)); do
  case $1 in
    --)
      shift
      launcher=("$@")
      break
      ;;
    --coordinator | --coordinator=*) jx_take "$@"; COORDINATOR=$JX_VALUE ;;
    --num-processes | --num-processes=*) jx_take "$@"; NUM_PROCESSES=$JX_VALUE ;;
    --process-id | --process-id=*) jx_take "$@"; PROCESS_ID=$JX_VALUE; PROCESS_ID_FLAG=1 ;;
    --python | --python=*) jx_take "$@"; PYTHON=$JX_VALUE ;;
    --local) LOCAL=1; JX_SHIFT=1 ;;
    --dry-run) JX_DRY_RUN=1; JX_SHIFT=1 ;;
    -h | --help) usage; exit 0 ;;
    *) jx_unknown "$1" ;;
  esac
  shift "$JX_SHIFT"
done

if [[ $LOCAL == 1 ]]; then
  COORDINATOR=${COORDINATOR:-localhost:12355}
  if [[ $PROCESS_ID_FLAG == 1 ]]; then
    jx_die "--process-id cannot be combined with --local (which starts all --num-processes processes)"
  fi
else
  jx_require "$COORDINATOR" --coordinator JAXSLM_COORDINATOR
fi
jx_require "$NUM_PROCESSES" --num-processes JAXSLM_NUM_PROCESSES
if [[ ! $COORDINATOR =~ ^.+:[0-9]+$ ]]; then
  jx_die "--coordinator must be HOST:PORT (e.g. node0:12355), not '$COORDINATOR'"
fi
if [[ ! $NUM_PROCESSES =~ ^[0-9]+$ ]] || ((NUM_PROCESSES < 1)); then
  jx_die "--num-processes must be a positive integer, not '$NUM_PROCESSES'"
fi
if [[ $LOCAL != 1 ]]; then
  jx_require "$PROCESS_ID" --process-id JAXSLM_PROCESS_ID
  if [[ ! $PROCESS_ID =~ ^[0-9]+$ ]] || ((PROCESS_ID >= NUM_PROCESSES)); then
    jx_die "--process-id must be an integer in 0..$((NUM_PROCESSES - 1)), not '$PROCESS_ID'"
  fi
fi
if ((${#launcher[@]} == 0)); then
  jx_die "no launcher given: put it and its arguments after --, e.g. -- launch/pretrain.py --config configs/tiny.py --workdir runs/x"
fi

extra_env=()
if [[ ${JAX_PLATFORMS:-} == cpu && -z ${JAX_CPU_COLLECTIVES_IMPLEMENTATION:-} ]]; then
  extra_env=(JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo)
fi
command_for() { # command_for I: sets cmd to process I's command
  cmd=(env "JAXSLM_COORDINATOR=$COORDINATOR" "JAXSLM_NUM_PROCESSES=$NUM_PROCESSES"
    "JAXSLM_PROCESS_ID=$1" ${extra_env[@]+"${extra_env[@]}"} "$PYTHON" "${launcher[@]}")
}

if [[ $LOCAL != 1 ]]; then
  command_for "$PROCESS_ID"
  jx_exec "${cmd[@]}"
fi

# --local: all processes here; stop the others as soon as one fails.
pids=()
stop_all() {
  local pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
for ((i = 0; i < NUM_PROCESSES; i++)); do
  command_for "$i"
  if [[ $JX_DRY_RUN == 1 ]]; then
    jx_run "${cmd[@]}"
  else
    printf '+ %s &\n' "$(jx_show "${cmd[@]}")" >&2
    "${cmd[@]}" &
    pids+=("$!")
  fi
done
rc=0
for pid in ${pids[@]+"${pids[@]}"}; do
  status=0
  if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 403)); then
    wait -n || status=$? # whichever process ends first
  else
    wait "$pid" || status=$? # bash < 4.3 has no wait -n: in order
  fi
  if ((status != 0)); then
    rc=$status
    jx_note "a process exited with status $status; stopping the others"
    stop_all
    wait || true
    break
  fi
done
exit "$rc"
