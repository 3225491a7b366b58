"""Orbax reads for conversion, holding at most one copy of a model.

    for leaves in read_batched(step_dir, shapes, [["embed"], ["layers_0/attn/q_proj/kernel"]]):
      ...                                        # {path: numpy array}, one batch at a time

`read_batched` restores a few leaves at a time as host arrays (Orbax's
partial restore) instead of the whole tree. Writing without a second copy is
`jaxslm.checkpoint.save_params(..., host_in_place=True)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxslm.lora.tree import nest_paths


def read_batched(step_dir: str, shapes: dict[str, jax.ShapeDtypeStruct],
                 batches: Iterable[list[str]]) -> Iterator[dict[str, np.ndarray]]:
  """For each batch of '/'-joined paths, {path: host numpy array} restored
  from `step_dir`'s params and cast to the dtype in `shapes` (as `jaxslm.load`
  casts). Only the current batch is read: a caller that drops each batch
  before taking the next never holds the whole tree."""
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  path = os.path.join(step_dir, "params")
  for batch in batches:
    item = nest_paths({p: jax.ShapeDtypeStruct(shapes[p].shape, shapes[p].dtype) for p in batch})
    args = nest_paths({p: ocp.RestoreArgs(restore_type=np.ndarray, dtype=shapes[p].dtype)
                       for p in batch})
    out = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=args,
                                                          partial_restore=True))
    flat = {p: _get(out, p) for p in batch}
    del out
    yield flat


def _get(tree: dict, path: str):
  for k in path.split("/"):
    tree = tree[k]
  return tree
