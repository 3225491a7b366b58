"""Orbax reads and writes for conversion, holding at most one copy of a model.

    save_in_place("runs/smol", params, meta)     # host numpy leaves written as they are
    for leaves in read_batched(step_dir, shapes, [["embed"], ["layers_0/attn/q_proj/kernel"]]):
      ...                                        # {path: numpy array}, one batch at a time

`jaxslm.checkpoint.save_params` lets Orbax copy each host array before the
write and hold the zstd-compressed chunks until it commits: about two more
copies of the tree at the peak. `save_in_place` writes the same layout
(`params/` + `meta/`, what `jaxslm.load` reads) from the caller's arrays
themselves, uncompressed, so the write adds nothing. `read_batched` restores
a few leaves at a time as host arrays (Orbax's partial restore) instead of
the whole tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_in_place(directory: str, params, meta: dict[str, Any]) -> str:
  """`save_params` for a tree of host numpy arrays, written in place (no
  copy, no compression). The arrays must not change until it returns (it
  returns when the write is done). Written to a temporary sibling and renamed
  into place; refuses to overwrite an existing directory. Returns `directory`."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory):
    raise FileExistsError(f"{directory!r} already exists; choose a new directory or remove it.")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
  try:
    # This process alone writes; by default Orbax would wait for every process.
    one = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                             active_processes={jax.process_index()})
    th = ocp.type_handlers
    registry = th.create_type_handler_registry(
        *[(t, th.get_type_handler(t)) for t in (int, float, bytes, np.number, jax.Array, str)],
        (np.ndarray, th.NumpyHandler(deepcopy_host_arrays=False)))
    params = jax.tree.map(np.asarray, params)   # host leaves as they are
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False,
                                          multiprocessing_options=one)
    ocp.Checkpointer(handler, multiprocessing_options=one).save(
        os.path.join(tmp, "params"), args=ocp.args.PyTreeSave(params))
    ocp.Checkpointer(ocp.JsonCheckpointHandler(multiprocessing_options=one),
                     multiprocessing_options=one).save(os.path.join(tmp, "meta"), meta)
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def read_batched(step_dir: str, shapes: dict[str, jax.ShapeDtypeStruct],
                 batches: Iterable[list[str]]) -> Iterator[dict[str, np.ndarray]]:
  """For each batch of '/'-joined paths, {path: host numpy array} restored
  from `step_dir`'s params and cast to the dtype in `shapes` (as `jaxslm.load`
  casts). Only the current batch is read: a caller that drops each batch
  before taking the next never holds the whole tree."""
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  path = os.path.join(step_dir, "params")
  for batch in batches:
    item = _nest({p: jax.ShapeDtypeStruct(shapes[p].shape, shapes[p].dtype) for p in batch})
    args = _nest({p: ocp.RestoreArgs(restore_type=np.ndarray, dtype=shapes[p].dtype)
                  for p in batch})
    out = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                          partial_restore=True))
    flat = {p: _get(out, p) for p in batch}
    del out
    yield flat


def _nest(flat: dict[str, Any]) -> dict:
  out: dict = {}
  for path, x in flat.items():
    *parents, leaf = path.split("/")
    node = out
    for k in parents:
      node = node.setdefault(k, {})
    node[leaf] = x
  return out


def _get(tree: dict, path: str):
  for k in path.split("/"):
    tree = tree[k]
  return tree
