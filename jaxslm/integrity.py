"""Which checkpoint steps are intact, and falling back to the newest one.

    problem = integrity.verify_step("runs/x/checkpoints/500")   # None if intact
    step, damaged = integrity.newest_intact_step("runs/x/checkpoints")
    # A resumed run: open, read the newest meta, restore the newest intact state.
    checkpointer = integrity.open_checkpointer("runs/x/checkpoints", set_aside=resume, keep=3)
    latest, meta = integrity.newest_meta(checkpointer, set_aside=resume, log=print)
    step, params, opt_state, meta = integrity.restore_newest_intact(
        checkpointer, abstract_params, abstract_opt_state, log=print)

A step is damaged when it lacks an item (params, opt_state, meta) or its
commit marker, when an array or meta differs from the checksum recorded at
save (`jaxslm.checksums`), or when Orbax/TensorStore cannot read it at all.
`verify_step` reads every array of the step (as host arrays, whatever the
devices that saved it), so it answers for the whole step, optimizer state
included. `quarantine` moves a damaged step to `checkpoints/damaged/` and
never deletes anything; `restore_newest_intact` is what a resumed run calls.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxslm import checkpoint as ckpt
from jaxslm import checksums, paths

DAMAGED_DIR = "damaged"


def verify_step(step_dir: str) -> str | None:
  """What is wrong with one step (or params-only export) directory, or None.

  Reads meta and every array item in full and compares them with the
  checksums saved with them. A step saved before checksums existed is
  checked for its items, commit marker and readability only.
  """
  step_dir = paths.resolve(step_dir)
  try:
    meta = ckpt.read_step_meta(step_dir, with_checksums=True)
    items = ("params", "opt_state") if paths.isdir(paths.join(step_dir, "opt_state")) else ("params",)
    for item in items:   # one item in memory at a time
      ckpt.verify_restored(step_dir, meta, **{item: _read_item_on_host(step_dir, item)})
  except ckpt.DamagedCheckpoint as e:
    return e.problem
  return None


def has_checksums(step_dir: str) -> bool:
  """Whether a step was saved with checksums (False for older checkpoints)."""
  return checksums.KEY in ckpt.read_step_meta(paths.resolve(step_dir), with_checksums=True)


def newest_intact_step(ckpt_dir: str) -> tuple[int | None, list[tuple[int, str]]]:
  """The newest step of a checkpoints/ directory that verifies, and the
  (step, problem) of every newer step that does not, newest first. The step
  is None when no step is intact (or there are none)."""
  ckpt_dir = paths.resolve(ckpt_dir)
  damaged = []
  for step in reversed(ckpt.step_numbers(ckpt_dir)):
    problem = verify_step(paths.join(ckpt_dir, str(step)))
    if problem is None:
      return step, damaged
    damaged.append((step, problem))
  return None, damaged


def quarantine(step_dir: str) -> str:
  """Move a damaged step to `<checkpoints>/damaged/<step>-<UTC time>` and
  return its new path. Nothing is deleted; Orbax no longer sees the step.
  In a multi-process run every process calls it: process 0 moves the step
  and the others wait for it."""
  step_dir = paths.resolve(step_dir)
  parent, name = step_dir.rsplit("/", 1) if paths.is_remote(step_dir) else os.path.split(step_dir)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
  target = paths.join(parent, DAMAGED_DIR, f"{name}-{stamp}")
  if jax.process_index() == 0:
    paths.makedirs(paths.join(parent, DAMAGED_DIR))
    if paths.is_remote(step_dir):
      from etils import epath
      epath.Path(step_dir).rename(epath.Path(target))
    else:
      os.rename(step_dir, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"jaxslm quarantine {name}")
  return target


def open_checkpointer(directory: str, *, set_aside: bool, log: Callable[[str], Any] | None = None,
                      **kwargs) -> ckpt.Checkpointer:
  """`Checkpointer(directory, **kwargs)`. Orbax cannot open a directory one of
  whose steps has unreadable step metadata; with `set_aside` (a resumed run)
  such steps are moved aside, with a warning line each, until it can."""
  log = log or _stderr
  while True:
    try:
      return ckpt.Checkpointer(directory, **kwargs)
    except ckpt.DamagedCheckpoint as e:
      if not set_aside:
        raise
      where = quarantine(e.step_dir)
      log(f"warning: checkpoint {e.step_dir} is damaged ({e.problem}); moved it to {where} "
          "and resuming from an earlier step")


def newest_meta(checkpointer: ckpt.Checkpointer, *, set_aside: bool,
                log: Callable[[str], Any] | None = None) -> tuple[int | None, dict | None]:
  """The newest step and its meta, or (None, None) when there is no step: what
  a trainer reads before it builds anything. With `set_aside` (a resumed run)
  newer steps whose layout or meta is damaged are moved aside first, as in
  `restore_newest_intact`, which then checks the arrays; without it, a
  damaged newest step raises its DamagedCheckpoint."""
  log = log or _stderr
  checkpointer.reload()
  moved = []
  for step in reversed(ckpt.step_numbers(checkpointer.directory)):
    try:
      return step, checkpointer.read_meta(step)
    except ckpt.DamagedCheckpoint as e:
      if not set_aside:
        raise
      _set_aside(checkpointer, step, e, log)
      moved.append(step)
  if moved:
    raise _none_intact(checkpointer, moved)
  return None, None


def restore_newest_intact(checkpointer: ckpt.Checkpointer, abstract_params, abstract_opt_state, *,
                          log: Callable[[str], Any] | None = None):
  """What `--resume` calls: (step, params, opt_state, meta) of the newest step
  that restores and verifies, or None when the directory holds no step.

  Each newer step that is damaged is moved aside (`quarantine`) with one
  warning line through `log` (default: stderr). A restore that fails while
  `verify_step` finds the step intact (say, the abstract trees do not match
  the saved ones) is not damage: its error is raised and nothing is moved.
  When every step is damaged, a DamagedCheckpoint names them all.
  """
  log = log or _stderr
  moved = []
  checkpointer.reload()
  for step in reversed(ckpt.step_numbers(checkpointer.directory)):
    try:
      params, opt_state, meta = checkpointer.restore(step, abstract_params, abstract_opt_state)
      return step, params, opt_state, meta
    except ckpt.DamagedCheckpoint as e:
      _set_aside(checkpointer, step, e, log)
      moved.append(step)
  if moved:
    raise _none_intact(checkpointer, moved)
  return None


def _stderr(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _set_aside(checkpointer: ckpt.Checkpointer, step: int, error: Exception, log) -> None:
  """Move a step that failed to restore aside, once `verify_step` confirms the
  damage; otherwise re-raise the restore's own error (not damage)."""
  step_dir = checkpointer.step_dir(step)
  confirmed = verify_step(step_dir)
  if confirmed is None:
    raise error
  where = quarantine(step_dir)
  log(f"warning: checkpoint step {step} is damaged ({confirmed}); moved it to {where} "
      "and resuming from an earlier step")
  checkpointer.reload()


def _none_intact(checkpointer: ckpt.Checkpointer, moved: list[int]) -> ckpt.DamagedCheckpoint:
  return ckpt.DamagedCheckpoint(
      checkpointer.directory, "every step is damaged",
      f"No intact checkpoint in {checkpointer.directory}: steps {', '.join(map(str, moved))} "
      f"are damaged and were moved to {paths.join(checkpointer.directory, DAMAGED_DIR)}. "
      "Start the run again without --resume (in a new --workdir), or restore a copy.")


def damaged_load_error(error: ckpt.DamagedCheckpoint) -> ckpt.DamagedCheckpoint:
  """The one-line error for loading a damaged step: it names the step, what is
  wrong, and the newest intact step beside it with the call that loads it."""
  step_dir = error.step_dir
  parent, name = os.path.split(step_dir) if not paths.is_remote(step_dir) else step_dir.rsplit("/", 1)
  older = [s for s in ckpt.step_numbers(parent) if name.isdigit() and s < int(name)]
  intact = None
  for step in reversed(older):
    if verify_step(paths.join(parent, str(step))) is None:
      intact = step
      break
  label = f"step {name}" if name.isdigit() else "checkpoint"
  if intact is not None:
    good = paths.join(parent, str(intact))
    hint = (f'The newest intact step is {intact}: load it with jaxslm.load("{good}"), or '
            "continue the run with --resume, which moves damaged steps aside.")
  elif older:
    hint = f"No earlier step in {parent} is intact either; retrain or restore a copy."
  else:
    hint = "There is no earlier step to fall back to; retrain or restore a copy."
  return ckpt.DamagedCheckpoint(step_dir, error.problem,
                                f"Checkpoint {label} ({step_dir}) is damaged: {error.problem}. {hint}")


def _read_item_on_host(step_dir: str, item: str):
  """An array item restored as host numpy arrays in its saved shapes and dtypes."""
  from etils import epath
  path = epath.Path(paths.join(step_dir, item))
  with ckpt.reading(step_dir, item):
    handler = ocp.PyTreeCheckpointHandler()
    tree = handler.metadata(path).tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ocp.Checkpointer(handler).restore(path, args=ocp.args.PyTreeRestore(
        restore_args=restore_args))
