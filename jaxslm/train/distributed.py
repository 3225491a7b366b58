"""Multi-host start-up: `initialize()` before anything touches a JAX device.

Three ways a run becomes multi-process, tried in this order:

  explicit   --coordinator/--num-processes/--process-id on a launcher, or the
             environment variables JAXSLM_COORDINATOR (host:port),
             JAXSLM_NUM_PROCESSES and JAXSLM_PROCESS_ID (what the launch
             scripts set; an argument wins over its variable)
  detected   a Cloud TPU VM (TPU chips on the PCI bus, or TPU_WORKER_HOSTNAMES
             with more than one host, or MEGASCALE_* multislice variables), a
             SLURM job of more than one task, or an Open MPI job of more than
             one rank: JAX's own cluster detection fills in everything
             (`jax.distributed.initialize()`; JAX_LOCAL_DEVICE_IDS and
             JAX_COORDINATOR_PORT still apply)
  single     anything else: one process, nothing to do

With more than one process on CPU, cross-process collectives go through gloo
(`jax_cpu_collectives_implementation`). Calling `initialize` again is a no-op,
so a notebook or a test may call it freely; calling it after JAX has already
started its backend is refused with the reason, since JAX cannot attach a
running backend to other processes.

    python launch/pretrain.py --coordinator 10.0.0.1:1234 --num-processes 2 \
        --process-id 0 ...
    JAXSLM_COORDINATOR=10.0.0.1:1234 JAXSLM_NUM_PROCESSES=2 JAXSLM_PROCESS_ID=1 \
        python launch/pretrain.py ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax

from jaxslm.errors import UserError

ENV_COORDINATOR = "JAXSLM_COORDINATOR"
ENV_NUM_PROCESSES = "JAXSLM_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXSLM_PROCESS_ID"

_state: dict = {}   # how this process was set up (filled by the first `initialize`)


def _int_setting(value, flag: str, env: str, *, minimum: int) -> int | None:
  if value is None or value == "":
    return None
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise UserError(f"{flag}={value!r} (or ${env}) must be an integer.") from None
  if number < minimum:
    raise UserError(f"{flag}={number} (or ${env}) must be >= {minimum}.")
  return number


def explicit_settings(coordinator=None, num_processes=None, process_id=None,
                      environ: Mapping[str, str] | None = None) -> dict | None:
  """{coordinator, num_processes, process_id} from the arguments, else the
  JAXSLM_* variables; None if neither names a coordinator nor a process count.
  Raises UserError naming what is missing when only part of it is given."""
  env = os.environ if environ is None else environ
  coordinator = coordinator or env.get(ENV_COORDINATOR) or None
  num_processes = _int_setting(num_processes if num_processes is not None
                               else env.get(ENV_NUM_PROCESSES), "--num-processes",
                               ENV_NUM_PROCESSES, minimum=1)
  process_id = _int_setting(process_id if process_id is not None else env.get(ENV_PROCESS_ID),
                            "--process-id", ENV_PROCESS_ID, minimum=0)
  if coordinator is None and num_processes in (None, 1):
    if process_id not in (None, 0):
      raise UserError(f"--process-id={process_id} (or ${ENV_PROCESS_ID}) is set but no "
                      f"coordinator: also pass --coordinator HOST:PORT (or ${ENV_COORDINATOR}) "
                      f"and --num-processes N (or ${ENV_NUM_PROCESSES}).")
    return None
  missing = [f"{flag} (or ${env_name})" for value, flag, env_name in (
      (coordinator, "--coordinator HOST:PORT", ENV_COORDINATOR),
      (num_processes, "--num-processes N", ENV_NUM_PROCESSES),
      (process_id, "--process-id I", ENV_PROCESS_ID)) if value is None]
  if missing:
    pairs = (("coordinator", coordinator), ("num_processes", num_processes),
             ("process_id", process_id))
    given = ", ".join(f"{k}={v!r}" for k, v in pairs if v is not None)
    raise UserError(f"A multi-process run needs a coordinator address, the number of processes "
                    f"and this process's id; got {given} but not {', '.join(missing)}. Set all "
                    f"three (the same coordinator and count on every process, ids 0..N-1), or "
                    f"none for a single process.")
  host, _, port = str(coordinator).rpartition(":")
  if not host or not port.isdigit():
    raise UserError(f"--coordinator={coordinator!r} (or ${ENV_COORDINATOR}) must be HOST:PORT, "
                    "the address of process 0 and a free port, e.g. 10.0.0.1:1234.")
  if process_id >= num_processes:
    raise UserError(f"--process-id={process_id} (or ${ENV_PROCESS_ID}) must be in "
                    f"[0, {num_processes}) for --num-processes={num_processes}.")
  return {"coordinator": str(coordinator), "num_processes": num_processes,
          "process_id": process_id}


def tpu_chips() -> int:
  """TPU chips on this host's PCI bus (no network, no backend start); 0 if none."""
  try:
    from jax._src import hardware_utils
    return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
  except Exception:   # noqa: BLE001 - a private helper: absent or changed means "no"
    return 0


def detected_cluster(environ: Mapping[str, str] | None = None,
                     chips: int | None = None) -> str | None:
  """The multi-process environment JAX can configure itself, or None. On a
  Cloud TPU VM (`chips` > 0; looked up only for the real environment) JAX's
  own detection asks the metadata server for the slice's hosts: joining is
  recommended there even for one host, so any TPU VM counts."""
  env = os.environ if environ is None else environ
  if chips is None:
    chips = tpu_chips() if environ is None else 0

  def count(name: str) -> int:
    try:
      return int(str(env.get(name, "")).split("(")[0] or 0)   # SLURM writes e.g. "2(x3)"
    except ValueError:
      return 0

  hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if (len(hosts) > 1 or count("MEGASCALE_NUM_SLICES") > 1
      or env.get("MEGASCALE_COORDINATOR_ADDRESS")):
    return "Cloud TPU"
  if chips > 0:
    return "Cloud TPU VM"
  if "SLURM_JOB_ID" in env and (count("SLURM_NTASKS") > 1 or
                                (not env.get("SLURM_NTASKS") and count("SLURM_JOB_NUM_NODES") > 1)):
    return "SLURM"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI"
  return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None) -> dict:
  """Join this process to a multi-process JAX run (see the module doc).

  Returns {"mode": "explicit" | "detected" | "external" | "single",
  "process_id", "num_processes", ...} ("external": jax.distributed was
  already initialized by the caller). Idempotent: a second call returns the first answer.
  """
  if _state:
    return dict(_state)
  settings = explicit_settings(coordinator, num_processes, process_id)
  cluster = None if settings else detected_cluster()
  if settings is None and cluster is None:
    _state.update(mode="single", process_id=0, num_processes=1)
    return dict(_state)
  if jax.distributed.is_initialized():   # someone (a notebook) did it already
    _state.update(mode="external", process_id=jax.process_index(),
                  num_processes=jax.process_count())
    return dict(_state)
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    raise UserError("jaxslm.train.distributed.initialize() must run before anything touches a "
                    "JAX device (jax.devices(), an array, a config default that asks for the "
                    "backend); call it first thing in the program.")
  if jax.config.jax_cpu_collectives_implementation != "mpi":   # CPU collectives across processes
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if settings:
    jax.distributed.initialize(coordinator_address=settings["coordinator"],
                               num_processes=settings["num_processes"],
                               process_id=settings["process_id"],
                               local_device_ids=local_device_ids)
    _state.update(mode="explicit", **settings)
  else:
    jax.distributed.initialize(local_device_ids=local_device_ids)
    _state.update(mode="detected", cluster=cluster, process_id=jax.process_index(),
                  num_processes=jax.process_count())
  return dict(_state)

