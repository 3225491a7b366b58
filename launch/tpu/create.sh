#!/usr/bin/env bash
# Create a Cloud TPU VM slice. See docs/scale_out.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

ACCELERATOR=${JAXSLM_TPU_TYPE:-v5litepod-8}
VERSION=${JAXSLM_TPU_VERSION:-}
PRICING=${JAXSLM_TPU_PRICING:-standard}

usage() {
  cat <<EOF
Usage: launch/tpu/create.sh --name NAME --zone ZONE [flags]

Create a TPU VM slice (gcloud compute tpus tpu-vm create). A multi-host
accelerator type (e.g. v5litepod-16, v4-32) creates one VM per host ("worker");
setup.sh and run.sh then address all of them with --worker=all.

Flags:
  --accelerator-type TYPE  e.g. v5litepod-8, v5litepod-16, v4-8, v4-32, v5p-8, v6e-8.
                           Env JAXSLM_TPU_TYPE; default v5litepod-8.
  --version VERSION        TPU software (runtime) version. Env JAXSLM_TPU_VERSION;
                           default from the type: v6e -> v2-alpha-tpuv6e,
                           v5p -> v2-alpha-tpuv5, v5litepod/v5e -> v2-alpha-tpuv5-lite,
                           v2/v3/v4 -> tpu-ubuntu2204-base.
  --spot                   a Spot VM (cheaper, can be preempted at any time).
  --preemptible            a preemptible VM (cheaper, preempted within 24 h).
  --pricing MODEL          standard | spot | preemptible. Env JAXSLM_TPU_PRICING;
                           default standard. --spot/--preemptible set it.

$JX_TPU_COMMON_HELP

Example:
  launch/tpu/create.sh --name slm-v5e --zone us-west4-a --accelerator-type v5litepod-16 --spot
EOF
}

default_version() {
  case $1 in
    v6e*) echo v2-alpha-tpuv6e ;;
    v5p*) echo v2-alpha-tpuv5 ;;
    v5litepod* | v5e*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

while (($#)); do
  if ! jx_tpu_flag "$@"; then
    case $1 in
      --accelerator-type | --accelerator-type=*) jx_take "$@"; ACCELERATOR=$JX_VALUE ;;
      --version | --version=*) jx_take "$@"; VERSION=$JX_VALUE ;;
      --pricing | --pricing=*) jx_take "$@"; PRICING=$JX_VALUE ;;
      --spot) PRICING=spot; JX_SHIFT=1 ;;
      --preemptible) PRICING=preemptible; JX_SHIFT=1 ;;
      *) jx_unknown "$1" ;;
    esac
  fi
  shift "$JX_SHIFT"
done

jx_require "$ACCELERATOR" --accelerator-type JAXSLM_TPU_TYPE
if [[ -z $VERSION ]] && ! VERSION=$(default_version "$ACCELERATOR"); then
  jx_die "--version is required for accelerator type '$ACCELERATOR' (no default known); see https://cloud.google.com/tpu/docs/runtimes"
fi
case $PRICING in
  standard) pricing_args=() ;;
  spot) pricing_args=(--spot) ;;
  preemptible) pricing_args=(--preemptible) ;;
  *) jx_die "--pricing must be standard, spot or preemptible, not '$PRICING'" ;;
esac
jx_tpu_check
jx_tpu_where

jx_run "$JX_GCLOUD" compute tpus tpu-vm create "$TPU_NAME" "${JX_WHERE[@]}" \
  "--accelerator-type=$ACCELERATOR" "--version=$VERSION" ${pricing_args[@]+"${pricing_args[@]}"}
