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
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxslm import paths

ITEMS = ("params", "opt_state", "meta")


def checkpoint_dir(workdir: str) -> str:
  return paths.join(paths.resolve(workdir), "checkpoints")


class Checkpointer:
  """Save every N steps (async), keep the last K, restore exactly."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = paths.resolve(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(_orbax_path(self.directory), options=options,
                                         item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta)), force=True)

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_params, abstract_opt_state):
    """Restore onto the shapes/dtypes/shardings of the abstract trees."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore()))
    return out["params"], out["opt_state"], out["meta"]

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
  return (paths.isdir(paths.join(path, "params")) and paths.isdir(paths.join(path, "meta"))
          and paths.finished(path))


def resolve_step_dir(path: str) -> str:
  """A step directory from a run's workdir, its checkpoints/ dir, or a step dir."""
  path = paths.resolve(path)
  if not paths.isdir(path):
    raise FileNotFoundError(f"Checkpoint path {path!r} does not exist.")
  if _is_step_dir(path):
    return path
  for base in (paths.join(path, "checkpoints"), path):
    if paths.isdir(base):
      steps = [int(d) for d in paths.listdir(base) if d.isdigit()
               and paths.isdir(paths.join(base, d, "meta"))
               and paths.finished(paths.join(base, d))]
      if steps:
        return paths.join(base, str(max(steps)))
  raise FileNotFoundError(
      f"No checkpoint found under {path!r}: expected a run's workdir (with checkpoints/<step>/), "
      f"a checkpoints/ directory, or one step's directory (with params/ and meta/).")


def read_step_meta(step_dir: str) -> dict[str, Any]:
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
      _orbax_path(paths.join(step_dir, "meta")))


def read_step_params(step_dir: str, abstract_params=None):
  ckptr = ocp.StandardCheckpointer()
  return ckptr.restore(_orbax_path(paths.join(step_dir, "params")), abstract_params)


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


def _save_host_tree(path, params, one) -> None:
  import numpy as np
  th = ocp.type_handlers
  registry = th.create_type_handler_registry(
      *[(t, th.get_type_handler(t)) for t in (int, float, bytes, np.number, jax.Array, str)],
      (np.ndarray, th.NumpyHandler(deepcopy_host_arrays=False)))
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False,
                                        multiprocessing_options=one)
  ocp.Checkpointer(handler, multiprocessing_options=one).save(
      path, args=ocp.args.PyTreeSave(jax.tree.map(np.asarray, params)))
