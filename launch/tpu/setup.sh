#!/usr/bin/env bash
# Install jaxslm on every worker of a TPU VM slice. See docs/scale_out.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

REPO=${JAXSLM_REPO:-}
REF=${JAXSLM_REF:-HEAD}
REMOTE_DIR=${JAXSLM_REMOTE_DIR:-jaxslm}
PYTHON=${JAXSLM_PYTHON:-python3}
JAX_SPEC=${JAXSLM_JAX_SPEC:-jax[tpu]}
EXTRA_PACKAGES=${JAXSLM_EXTRA_PACKAGES:-}
WORKER=${JAXSLM_TPU_WORKER:-all}
CHECK=${JAXSLM_SETUP_CHECK:-1}
LOCAL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

usage() {
  cat <<EOF
Usage: launch/tpu/setup.sh --name NAME --zone ZONE [flags]

Put jaxslm on every worker of the slice and install it into a virtual
environment there (REMOTE_DIR/.venv):
  source   with --repo: git clone REPO on each worker and check out REF;
           without:     git archive REF of this checkout, scp it to each worker
                        and unpack it (committed files only, not local edits).
  install  PYTHON -m venv .venv; pip install -r requirements.txt -e . JAX_SPEC EXTRA
  check    print each worker's jax.process_index() and device counts (with --worker all).
Running it again updates the code and the packages in place.

Flags:
  --repo URL              git URL to clone on the workers. Env JAXSLM_REPO; default
                          none: upload this checkout ($LOCAL_ROOT) instead.
  --ref REF               branch, tag or commit. Env JAXSLM_REF; default HEAD (with
                          --repo the remote's default branch, else this checkout's commit).
  --dir DIR               directory on the workers, relative to the home directory.
                          Env JAXSLM_REMOTE_DIR; default jaxslm.
  --python PYTHON         interpreter on the workers that creates the venv.
                          Env JAXSLM_PYTHON; default python3.
  --jax SPEC              pip requirement for JAX on TPU. Env JAXSLM_JAX_SPEC;
                          default 'jax[tpu]'; e.g. 'jax[tpu]==0.6.2' to pin.
  --extra-packages "P Q"  more pip requirements, space-separated (e.g. gcsfs, which
                          gs:// paths need; see docs/scale_out.md). Env JAXSLM_EXTRA_PACKAGES;
                          default none.
  --worker W              which workers: all, or an index (0, 1, ...).
                          Env JAXSLM_TPU_WORKER; default all.
  --no-check              skip the device check. Env JAXSLM_SETUP_CHECK=0.

$JX_TPU_COMMON_HELP

Example:
  launch/tpu/setup.sh --name slm-v5e --zone us-west4-a --ref my-branch
EOF
}

while (($#)); do
  if ! jx_tpu_flag "$@"; then
    case $1 in
      --repo | --repo=*) jx_take "$@"; REPO=$JX_VALUE ;;
      --ref | --ref=*) jx_take "$@"; REF=$JX_VALUE ;;
      --dir | --dir=*) jx_take "$@"; REMOTE_DIR=$JX_VALUE ;;
      --python | --python=*) jx_take "$@"; PYTHON=$JX_VALUE ;;
      --jax | --jax=*) jx_take "$@"; JAX_SPEC=$JX_VALUE ;;
      --extra-packages | --extra-packages=*) jx_take "$@"; EXTRA_PACKAGES=$JX_VALUE ;;
      --worker | --worker=*) jx_take "$@"; WORKER=$JX_VALUE ;;
      --no-check) CHECK=0; JX_SHIFT=1 ;;
      *) jx_unknown "$1" ;;
    esac
  fi
  shift "$JX_SHIFT"
done

jx_require "$REF" --ref JAXSLM_REF
jx_require "$REMOTE_DIR" --dir JAXSLM_REMOTE_DIR
jx_require "$PYTHON" --python JAXSLM_PYTHON
jx_require "$JAX_SPEC" --jax JAXSLM_JAX_SPEC
jx_require "$WORKER" --worker JAXSLM_TPU_WORKER
jx_tpu_check
jx_tpu_where

dir=$(printf %q "$REMOTE_DIR")
py=$(printf %q "$PYTHON")
archive_name=jaxslm-src.tar.gz
read -r -a extra <<<"$EXTRA_PACKAGES"
pip_args=(-r requirements.txt -e . "$JAX_SPEC" ${extra[@]+"${extra[@]}"})

# The script each worker runs (bash, the login shell of TPU VM images).
if [[ -n $REPO ]]; then
  fetch="if [ ! -d $dir/.git ]; then git clone $(printf %q "$REPO") $dir; fi; cd $dir;"
  fetch+=" git fetch --tags origin $(printf %q "$REF"); git checkout --force --detach FETCH_HEAD;"
else
  fetch="mkdir -p $dir; tar -xzf $archive_name -C $dir; rm -f $archive_name; cd $dir;"
fi
venv="if [ ! -x .venv/bin/python ]; then $py -m venv .venv || { sudo apt-get update -qq"
venv+=" && sudo apt-get install -y -qq $(printf %q "${PYTHON##*/}-venv") && rm -rf .venv && $py -m venv .venv; }; fi;"
install=".venv/bin/pip install --quiet --upgrade pip; .venv/bin/pip install $(jx_quote "${pip_args[@]}");"
remote="set -euo pipefail; $fetch $venv $install"
if [[ $CHECK == 1 && $WORKER == all ]]; then
  probe='import jax; print(f"jaxslm setup: process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of {jax.device_count()} devices ({jax.devices()[0].device_kind})")'
  remote+=" .venv/bin/python -c '$probe';"
fi

ssh=("$JX_GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${JX_WHERE[@]}" "--worker=$WORKER")
if [[ -z $REPO ]]; then
  archive="${TMPDIR:-/tmp}/jaxslm-src-$$.tar.gz"
  if [[ $JX_DRY_RUN != 1 ]]; then
    trap 'rm -f "$archive"' EXIT
  fi
  if [[ -n $(git -C "$LOCAL_ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    jx_note "note: uploading $REF of $LOCAL_ROOT; uncommitted changes are not included"
  fi
  jx_run git -C "$LOCAL_ROOT" archive --format=tar.gz -o "$archive" "$REF"
  jx_run "$JX_GCLOUD" compute tpus tpu-vm scp "$archive" "$TPU_NAME:$archive_name" \
    "${JX_WHERE[@]}" "--worker=$WORKER"
fi
jx_run "${ssh[@]}" "--command=$remote"
