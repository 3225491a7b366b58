"""Orbax checkpoints: one directory per step holding everything needed to
continue a run or to rebuild model + tokenizer.

Layout: `<workdir>/checkpoints/<step>/` with items
  params     the parameter tree (fp32 master weights)
  opt_state  the optimizer state
  meta       JSON: step, RNG, data position, the run config, the model config,
             the tokenizer spec (self-contained), metrics at save time

Orbax writes each step into a temporary directory and renames it into place
when complete, so a process killed mid-save (or a full disk) leaves the
previous checkpoints intact; unfinished temporaries are ignored.

Paths may be `gs://bucket/...` URLs (`jaxslm.paths`): TensorStore writes the
arrays there itself, and as an object store has no rename, Orbax writes each
step in place and marks it finished with a `commit_success.txt` file; a step
without one (a save cut short) is ignored the same way.

Every step proves it is intact (`jaxslm.checksums`): `meta` carries the
checksum of each saved array, and each restore compares what it read. A step
that fails the comparison, lacks an item or (locally, where Orbax renames a
finished step into place) its commit marker, or cannot be read at all raises
`DamagedCheckpoint`, one line naming the step and what is wrong, with the
TensorStore error text but without its tracebacks and log spam.
`jaxslm.integrity` finds the newest intact step and moves damaged ones aside.
Steps written before checksums existed still restore, with a one-line
`UncheckedCheckpoint` warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxslm import checksums, paths
from jaxslm.errors import UserError

ITEMS = ("params", "opt_state", "meta")
EXPORT_ITEMS = ("params", "meta")     # a params-only checkpoint (`save_params`)


class DamagedCheckpoint(UserError):
  """A checkpoint step that fails verification, lacks an item or its commit
  marker, or cannot be read. `step_dir` and `problem` say which and why."""

  def __init__(self, step_dir: str, problem: str, message: str | None = None):
    self.step_dir, self.problem = step_dir, problem
    super().__init__(message or (
        f"Checkpoint {step_dir} is damaged: {problem}. Load or resume from an earlier step "
        f"(jaxslm.integrity.newest_intact_step finds the newest intact one)."))


# Also written to Orbax's step metadata: a step whose meta has lost its record
# (a damaged key) is told apart from a step saved before checksums existed.
_CLAIM = {"jaxslm_checksums": checksums.ALGORITHM}


class UncheckedCheckpoint(UserWarning):
  """A checkpoint written without checksums: loaded, but not verified."""


def checkpoint_dir(workdir: str) -> str:
  return paths.join(paths.resolve(workdir), "checkpoints")


class Checkpointer:
  """Save every N steps (async), keep the last K, restore exactly."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = paths.resolve(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    try:   # Orbax reads every step's metadata here: one damaged step stops it
      self.manager = ocp.CheckpointManager(_orbax_path(self.directory), options=options,
                                           item_names=ITEMS)
    except Exception as e:   # noqa: BLE001 - named below if a step is to blame
      for step in reversed(step_numbers(self.directory)):
        step_dir = paths.join(self.directory, str(step))
        problem = layout_problem(step_dir)
        if problem is not None:
          raise DamagedCheckpoint(step_dir, problem, (
              f"Checkpoint step {step} ({step_dir}) is damaged: {problem}; Orbax cannot open "
              f"{self.directory} while it is there. Resume (which moves damaged steps aside) or "
              f"move it aside with jaxslm.integrity.quarantine({step_dir!r}).")) from e
      raise

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def step_dir(self, step: int) -> str:
    return paths.join(self.directory, str(step))

  def reload(self) -> None:
    """Read the list of steps from disk again (after steps were moved aside)."""
    self.manager.reload()

  def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> bool:
    """Save a step; `meta` gains the checksums of params and opt_state (computed
    by process 0, the one that writes meta)."""
    if jax.process_index() == 0:
      meta = with_checksums(meta, params=params, opt_state=opt_state)
    return self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta)), force=True, custom_metadata=_CLAIM)

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    """A step's meta, checked against its checksum (DamagedCheckpoint if not)."""
    step = self.latest_step() if step is None else step
    step_dir = self.step_dir(step)
    _check_layout(step_dir)
    with reading(step_dir, "meta"):
      meta = self.manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    _check_meta(step_dir, meta)
    return _without_checksums(meta)

  def restore(self, step: int, abstract_params, abstract_opt_state):
    """Restore onto the shapes/dtypes/shardings of the abstract trees, verified
    against the step's checksums (DamagedCheckpoint if anything differs)."""
    step_dir = self.step_dir(step)
    _check_layout(step_dir)
    with reading(step_dir, "params, opt_state or meta"):
      out = self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params),
          opt_state=ocp.args.StandardRestore(abstract_opt_state),
          meta=ocp.args.JsonRestore()))
    _check_meta(step_dir, out["meta"])
    verify_restored(step_dir, out["meta"], params=out["params"], opt_state=out["opt_state"])
    return out["params"], out["opt_state"], _without_checksums(out["meta"])

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs (with shardings) describing a tree, for restore."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _orbax_path(path: str):
  """What Orbax is given: a URL as an `epath.Path` (so gs:// reaches TensorStore
  and gcsfs), a local path as it is."""
  if paths.is_remote(path):
    from etils import epath
    return epath.Path(path)
  return path


def _is_step_dir(path: str) -> bool:
  """A directory that is (or was meant to be) one checkpoint: it has any of
  the items, or Orbax's step metadata or commit marker."""
  return (any(paths.isdir(paths.join(path, item)) for item in ITEMS)
          or paths.exists(paths.join(path, "_CHECKPOINT_METADATA"))
          or paths.exists(paths.join(path, paths.COMMIT_FILE))) and paths.finished(path)


def step_numbers(directory: str) -> list[int]:
  """The steps in a checkpoints/ directory, oldest first: every directory named
  by a number (Orbax's unfinished temporaries are named otherwise; on an
  object store, steps without a commit marker are saves in progress)."""
  if not paths.isdir(directory):
    return []
  return sorted(int(d) for d in paths.listdir(directory) if d.isdigit()
                and paths.isdir(paths.join(directory, d)) and paths.finished(paths.join(directory, d)))


def resolve_step_dir(path: str) -> str:
  """A step directory from a run's workdir, its checkpoints/ dir, or a step dir."""
  path = paths.resolve(path)
  if not paths.isdir(path):
    raise FileNotFoundError(f"Checkpoint path {path!r} does not exist.")
  if _is_step_dir(path):
    return path
  for base in (paths.join(path, "checkpoints"), path):
    steps = step_numbers(base)
    if steps:
      return paths.join(base, str(steps[-1]))
  raise FileNotFoundError(
      f"No checkpoint found under {path!r}: expected a run's workdir (with checkpoints/<step>/), "
      f"a checkpoints/ directory, or one step's directory (with params/ and meta/).")


def read_step_meta(step_dir: str, *, with_checksums: bool = False) -> dict[str, Any]:
  """A step's (or export's) meta, checked against its checksum; the checksum
  record itself (`meta["checksums"]`) only if `with_checksums`."""
  _check_layout(step_dir)
  with reading(step_dir, "meta"):
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        _orbax_path(paths.join(step_dir, "meta")))
  _check_meta(step_dir, meta)
  return meta if with_checksums else _without_checksums(meta)


def read_step_params(step_dir: str, abstract_params=None):
  """A step's params, verified against the checksums in its meta. Each leaf is
  read in the dtype it was saved in (so the bytes can be checked) and then
  cast to the dtype of `abstract_params`."""
  meta = read_step_meta(step_dir, with_checksums=True)
  rec = meta.get(checksums.KEY, {}).get("params") if isinstance(meta.get(checksums.KEY), dict) else None
  target = abstract_params
  if abstract_params is not None and isinstance(rec, dict):
    target = _saved_dtypes(abstract_params, rec)
  with reading(step_dir, "params"):
    params = ocp.StandardCheckpointer().restore(_orbax_path(paths.join(step_dir, "params")), target)
  verify_restored(step_dir, meta, params=params)
  if target is not abstract_params:
    params = jax.tree.map(lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype),
                          params, abstract_params)
  return params


def _without_checksums(meta: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in meta.items() if k != checksums.KEY}


def with_checksums(meta: dict[str, Any], **items) -> dict[str, Any]:
  """`meta` plus the checksum record of the array trees `items`."""
  return {**meta, checksums.KEY: checksums.record(items, meta)}


def verify_restored(step_dir: str, meta: dict[str, Any], **items) -> None:
  """Compare restored array trees with the checksums in `meta`; raise
  DamagedCheckpoint naming the first differences. Each process checks the
  leaves it holds whole, with no collective: a function that only process 0
  calls (a report, an export) may read checkpoints too."""
  problem = None
  if checksums.KEY not in meta:
    _warn_unchecked(step_dir)
  else:
    problem = checksums.check_meta(meta)
    rec = meta[checksums.KEY]
    unchecked = 0
    for item, tree in items.items():
      if problem is None:
        if not isinstance(rec.get(item), dict):
          problem = f"its checksum record has no entry for {item}"
        else:
          problem, n = checksums.check_tree(item, rec[item], tree)
          unchecked += n
    if problem is None and unchecked:
      _warn_unchecked(step_dir, f"{unchecked} of its arrays are sharded across processes (at save "
                                "or now) and were not checked")
  if problem is not None:
    raise DamagedCheckpoint(step_dir, problem)


def layout_problem(step_dir: str) -> str | None:
  """What is missing from a step (or export) directory, or None: an item, or
  Orbax's commit marker. A training step holds params, opt_state and meta
  and the marker; an export (`save_params`) holds params and meta."""
  if not paths.isdir(step_dir):
    return "the directory does not exist"
  training = (paths.exists(paths.join(step_dir, "_CHECKPOINT_METADATA"))
              or paths.isdir(paths.join(step_dir, "opt_state")))
  for item in ITEMS if training else EXPORT_ITEMS:
    if not paths.isdir(paths.join(step_dir, item)):
      return f"its {item} item is missing"
  if training and not paths.exists(paths.join(step_dir, paths.COMMIT_FILE)):
    return f"its commit marker ({paths.COMMIT_FILE}) is missing, so its save never finished"
  # An export has no step marker: it is renamed into place whole (locally), or
  # `paths.finished` checks its items' markers (object stores).
  return _step_metadata_problem(step_dir) if training else None


def _step_metadata_problem(step_dir: str) -> str | None:
  """Whether Orbax can read the step's own metadata (`_CHECKPOINT_METADATA`,
  which `ocp.CheckpointManager` reads for every step when it opens a directory)."""
  if not paths.exists(paths.join(step_dir, "_CHECKPOINT_METADATA")):
    return None   # optional for Orbax
  import logging
  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.CRITICAL)   # Orbax logs the parse error too; we report it once
  try:
    ocp.metadata.get_step_metadata(_orbax_path(step_dir))
  except Exception as e:   # noqa: BLE001 - what Orbax cannot read is damage
    from jaxslm import orbax_quiet
    return f"its Orbax step metadata (_CHECKPOINT_METADATA) cannot be read ({orbax_quiet.summary(e)})"
  finally:
    absl.setLevel(level)
  return None


def _check_layout(step_dir: str) -> None:
  problem = layout_problem(step_dir)
  if problem is not None:
    raise DamagedCheckpoint(step_dir, problem)


def _check_meta(step_dir: str, meta) -> None:
  if not isinstance(meta, dict):
    problem = f"its meta is a {type(meta).__name__}, not a JSON object"
  elif checksums.KEY in meta:
    problem = checksums.check_meta(meta)
  elif _claims_checksums(step_dir):
    problem = "its meta has lost its checksum record"
  else:
    problem = None
  if problem is not None:
    raise DamagedCheckpoint(step_dir, problem)


def _claims_checksums(step_dir: str) -> bool:
  """Whether Orbax's step metadata says the step was saved with checksums."""
  path = paths.join(step_dir, "_CHECKPOINT_METADATA")
  try:
    custom = json.loads(paths.read_text(path)).get("custom_metadata") if paths.exists(path) else None
  except (OSError, ValueError, AttributeError):
    return False   # unreadable: the step's items say the rest
  return isinstance(custom, dict) and "jaxslm_checksums" in custom


_warned: set[str] = set()


def _warn_unchecked(step_dir: str, why: str = "") -> None:
  if step_dir not in _warned:
    _warned.add(step_dir)
    why = why or ("it was written without checksums (by a jaxslm before checkpoints carried "
                  "them): its arrays are used unverified")
    warnings.warn(f"Checkpoint {step_dir}: {why}.", UncheckedCheckpoint, stacklevel=3)


def _saved_dtypes(abstract, rec: dict[str, Any]):
  """`abstract` with each leaf's dtype replaced by the one it was saved in."""
  def one(path, a):
    want = rec.get(checksums.leaf_name(path))
    try:
      dtype = np.dtype(want["dtype"])
    except (TypeError, KeyError, ValueError):
      return a   # not a record of this leaf: verification names it
    if dtype == a.dtype:
      return a
    return jax.ShapeDtypeStruct(a.shape, dtype, sharding=getattr(a, "sharding", None))
  return jax.tree_util.tree_map_with_path(one, abstract)


@contextlib.contextmanager
def reading(step_dir: str, what: str):
  """Turn an Orbax/TensorStore read failure into one DamagedCheckpoint line,
  and keep the leftovers of the failed read (tracebacks of its background
  tasks, warnings about coroutines never awaited) off the terminal."""
  from jaxslm import orbax_quiet
  orbax_quiet.install()
  try:
    yield
  except UserError:
    raise
  except Exception as e:   # noqa: BLE001 - any read failure of a step is its damage
    raise DamagedCheckpoint(step_dir, f"its {what} cannot be read ({orbax_quiet.summary(e)})") from e


def save_params(directory: str, params, meta: dict[str, Any], *,
                host_in_place: bool = False) -> str:
  """Write a params-only checkpoint (no optimizer state): `directory/params`
  and `directory/meta`, the layout `jaxslm.load` reads (a converted model,
  an export for sampling). Locally it is written to a temporary sibling and
  renamed into place, so an interrupted write never leaves a half checkpoint
  behind. On an object store (gs://) it is written in place, each item
  finished by Orbax's commit file: `resolve_step_dir` ignores it until both
  are there (a killed process leaves an unfinished directory, to be removed
  before writing it again). Refuses to overwrite an existing directory. Only the calling
  process writes: pass host (numpy) arrays, or arrays on this process's devices.

  `host_in_place=True` (conversion): the leaves are host numpy arrays, written
  from the caller's own buffers and uncompressed. By default Orbax copies each
  host array and holds the compressed chunks until it commits, about two more
  copies of the tree at the peak. The arrays must not change until it returns.
  """
  directory = paths.resolve(directory)
  if paths.exists(directory):
    raise FileExistsError(f"{directory!r} already exists; choose a new directory or remove it.")
  remote = paths.is_remote(directory)
  if remote:
    tmp = directory
    paths.makedirs(directory)
  else:
    import tempfile
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
  try:
    # This process alone writes (in a multi-process run, the caller is process 0
    # with host arrays); by default Orbax would wait for every process.
    one = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
    meta = with_checksums(meta, params=params)
    if host_in_place:
      _save_host_tree(_orbax_path(paths.join(tmp, "params")), params, one)
    else:
      if jax.process_count() > 1:   # Orbax will not write one process's device arrays
        params = jax.device_get(params)
      ckptr = ocp.StandardCheckpointer(multiprocessing_options=one)
      ckptr.save(_orbax_path(paths.join(tmp, "params")), params)
      ckptr.wait_until_finished()
    ocp.Checkpointer(ocp.JsonCheckpointHandler(multiprocessing_options=one),
                     multiprocessing_options=one).save(_orbax_path(paths.join(tmp, "meta")), meta)
    if not remote:
      os.replace(tmp, directory)
  except BaseException:
    paths.rmtree(tmp)
    raise
  return directory


def _numpy_handler(th):
  """orbax's NumpyHandler without a host copy of each array where this orbax has
  the option (deepcopy_host_arrays; 0.12.x), else its default."""
  try:
    return th.NumpyHandler(deepcopy_host_arrays=False)
  except TypeError:
    return th.NumpyHandler()


def _save_host_tree(path, params, one) -> None:
  import numpy as np
  th = ocp.type_handlers
  registry = th.create_type_handler_registry(
      *[(t, th.get_type_handler(t)) for t in (int, float, bytes, np.number, jax.Array, str)],
      (np.ndarray, _numpy_handler(th)))
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False,
                                        multiprocessing_options=one)
  ocp.Checkpointer(handler, multiprocessing_options=one).save(
      path, args=ocp.args.PyTreeSave(jax.tree.map(np.asarray, params)))
