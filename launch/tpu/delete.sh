#!/usr/bin/env bash
# Delete a Cloud TPU VM slice (all its workers and their disks). See docs/scale_out.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

ASYNC=${JAXSLM_TPU_DELETE_ASYNC:-0}

usage() {
  cat <<EOF
Usage: launch/tpu/delete.sh --name NAME --zone ZONE [flags]

Delete the slice without asking (gcloud compute tpus tpu-vm delete --quiet).
Everything on the workers' disks is lost: keep checkpoints on shared storage.

Flags:
  --async   return before the deletion finishes. Env JAXSLM_TPU_DELETE_ASYNC=1.

$JX_TPU_COMMON_HELP
EOF
}

while (($#)); do
  if ! jx_tpu_flag "$@"; then
    case $1 in
      --async) ASYNC=1; JX_SHIFT=1 ;;
      *) jx_unknown "$1" ;;
    esac
  fi
  shift "$JX_SHIFT"
done
jx_tpu_check
jx_tpu_where

async=()
if [[ $ASYNC == 1 ]]; then
  async=(--async)
fi
jx_run "$JX_GCLOUD" compute tpus tpu-vm delete "$TPU_NAME" "${JX_WHERE[@]}" --quiet ${async[@]+"${async[@]}"}
