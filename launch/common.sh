# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables set here are read by the sourcing scripts
# Helpers shared by the launch/tpu/*.sh scripts and launch/gpu/multinode.sh:
# error messages, flag values, dry-run printing. Sourced, never executed.
#
# Dry run: with --dry-run (or JAXSLM_DRY_RUN=1) every command a script would
# run is printed on stdout instead, one per line, prefixed "+ " and quoted
# with printf %q so that the line can be pasted into bash as is. Nothing else
# goes to stdout; notes and errors go to stderr. Without --dry-run the same
# "+ command" line goes to stderr just before the command runs.

JX_PROG=$(basename "$0")
JX_DRY_RUN=${JAXSLM_DRY_RUN:-0}
JX_GCLOUD=${JAXSLM_GCLOUD:-gcloud}
JX_SHIFT=1
JX_VALUE=
JX_UNKNOWN_HINT=  # set to " (launcher arguments go after --)" by scripts that take a launcher

# Print "PROG: error: MESSAGE" on stderr and exit 2 (a usage error).
jx_die() {
  printf '%s: error: %s\n' "$JX_PROG" "$*" >&2
  exit 2
}

# Print a note on stderr (keeps stdout for the commands in dry-run mode).
jx_note() {
  printf '%s: %s\n' "$JX_PROG" "$*" >&2
}

# jx_take "$@": the value of the flag in $1, given as "--flag=VALUE" or as
# "--flag VALUE". Sets JX_VALUE, and JX_SHIFT to the number of words used.
jx_take() {
  local flag=${1%%=*}
  if [[ $1 == *=* ]]; then
    JX_VALUE=${1#*=}
    JX_SHIFT=1
  elif (($# < 2)) || [[ $2 == --* ]]; then
    jx_die "$flag needs a value: $flag VALUE or $flag=VALUE (see $JX_PROG --help)"
  else
    JX_VALUE=$2
    JX_SHIFT=2
  fi
}

# jx_require VALUE FLAG [ENV_VAR]: exit with a message naming FLAG if VALUE is empty.
jx_require() {
  if [[ -z $1 ]]; then
    jx_die "$2 is required${3:+ (or set $3)}; see $JX_PROG --help"
  fi
}

# jx_unknown ARG: exit for an argument the script does not take.
jx_unknown() {
  jx_die "unknown argument '$1'; see $JX_PROG --help$JX_UNKNOWN_HINT"
}

# jx_quote ARGS...: ARGS as one line of bash, each word quoted with printf %q
# (the quoting used for commands that a remote shell will parse).
jx_quote() {
  local out
  printf -v out '%q ' "$@"
  printf '%s' "${out% }"
}

# jx_show ARGS...: ARGS as one line of bash for people to read: plain words as
# they are, others in single quotes; words with control characters (newlines)
# in printf %q's $'...' form, so that a command always stays on one line.
jx_show() {
  local out='' word sq="'" esc="'\\''"
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=" $word"
    elif [[ $word == *[[:cntrl:]]* ]]; then
      out+=" $(printf %q "$word")"
    else
      out+=" '${word//$sq/$esc}'"
    fi
  done
  printf '%s' "${out# }"
}

# jx_run CMD ARGS...: print "+ CMD ARGS"; run it unless dry-running.
jx_run() {
  if [[ $JX_DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(jx_show "$@")"
    return 0
  fi
  printf '+ %s\n' "$(jx_show "$@")" >&2
  "$@"
}

# jx_exec CMD ARGS...: like jx_run, but replaces this shell with the command.
jx_exec() {
  if [[ $JX_DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(jx_show "$@")"
    exit 0
  fi
  printf '+ %s\n' "$(jx_show "$@")" >&2
  exec "$@"
}

# jx_need_gcloud: exit with instructions if gcloud is missing (not in dry-run).
jx_need_gcloud() {
  if [[ $JX_DRY_RUN != 1 ]] && ! command -v "$JX_GCLOUD" >/dev/null 2>&1; then
    printf '%s: error: %s\n' "$JX_PROG" "'$JX_GCLOUD' was not found on PATH. Install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then run 'gcloud auth login'; or set JAXSLM_GCLOUD to its path; or pass --dry-run to print the commands without running them." >&2
    exit 127
  fi
}

# ------------------------------------------------------------ TPU scripts
# The flags every launch/tpu script takes. Defaults come from the environment.
TPU_NAME=${JAXSLM_TPU_NAME:-}
TPU_ZONE=${JAXSLM_TPU_ZONE:-}
TPU_PROJECT=${JAXSLM_TPU_PROJECT:-}

JX_TPU_COMMON_HELP="Common flags (a flag wins over its environment variable):
  --name NAME        TPU VM (slice) name. Required. Env JAXSLM_TPU_NAME.
  --zone ZONE        zone, e.g. us-west4-a, us-central2-b. Required. Env JAXSLM_TPU_ZONE.
  --project PROJECT  Google Cloud project. Env JAXSLM_TPU_PROJECT; default: gcloud's
                     configured project (gcloud config get-value project).
  --dry-run          print the commands (one per line, prefixed '+ ') instead of
                     running them. Env JAXSLM_DRY_RUN=1.
  -h, --help         this help.
Environment only: JAXSLM_GCLOUD, the gcloud binary (default: gcloud on PATH)."

# jx_tpu_flag "$@": parse one of the common flags above; returns 1 if $1 is
# not one of them. The sourcing script defines usage().
jx_tpu_flag() {
  case $1 in
    --name | --name=*) jx_take "$@"; TPU_NAME=$JX_VALUE ;;
    --zone | --zone=*) jx_take "$@"; TPU_ZONE=$JX_VALUE ;;
    --project | --project=*) jx_take "$@"; TPU_PROJECT=$JX_VALUE ;;
    --dry-run) JX_DRY_RUN=1; JX_SHIFT=1 ;;
    -h | --help) usage; exit 0 ;;
    *) return 1 ;;
  esac
}

# jx_tpu_check: the common required values, and gcloud itself.
jx_tpu_check() {
  jx_require "$TPU_NAME" --name JAXSLM_TPU_NAME
  jx_require "$TPU_ZONE" --zone JAXSLM_TPU_ZONE
  jx_need_gcloud
}

# jx_tpu_where: sets JX_WHERE to the --zone/--project arguments of gcloud.
jx_tpu_where() {
  JX_WHERE=("--zone=$TPU_ZONE")
  if [[ -n $TPU_PROJECT ]]; then
    JX_WHERE+=("--project=$TPU_PROJECT")
  fi
}
