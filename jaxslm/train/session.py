"""What every trainer does around its steps, written once.

    with Session(workdir, what="GRPO", keep=t.keep_checkpoints, resume=resume) as run:
      state = ... fresh, or restored: run.restore(abstract_a, abstract_b)
      run.open_log(start, t.steps)
      while step < t.steps:
        ... one step ...
        run.record(metrics)                   # metrics.jsonl (process 0)
        if step % t.checkpoint_every == 0: run.save(step, a, b, meta)
        if run.stop_requested(): run.interrupted(step, a, b, meta); break
    run.finish()

A `Session` owns the workdir's checkpoints (Orbax; a second save of the same
step is skipped), the resume rules (a workdir holding a checkpoint is
continued only with `--resume`), Ctrl-C/SIGTERM as a request to stop at the
next step boundary, the metrics log (a resumed run rewrites what came after
its checkpoint), the progress line, and the final plot. Pretraining,
fine-tuning and GRPO differ only in what they put in the two saved trees and
the meta.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax

from jaxslm import checkpoint as ckpt
from jaxslm import integrity, paths
from jaxslm.errors import SaveFailed, UserError
from jaxslm.train import parallel, reporting
from jaxslm.train.signals import StopRequest
from jaxslm.train.tracking import Trackers
from jaxslm.workdir_lock import WorkdirLock

# The launcher that continues each kind of run (for the messages that say how).
LAUNCHERS = {"pretraining": "launch/pretrain.py", "fine-tuning": "launch/finetune.py",
             "GRPO": "launch/grpo.py"}


def is_main_process() -> bool:
  return jax.process_index() == 0


def log(*args):
  if is_main_process():
    print(*args, flush=True)


def fmt_metrics(m: dict) -> str:
  """"loss 1.234, acc 0.5" (step left out), for one log line."""
  return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()
                   if k != "step")


class Session:
  """A trainer's workdir, checkpoints, stop signal, metrics log and progress line."""

  def __init__(self, workdir: str, *, what: str, keep: int, resume: bool,
               async_save: bool = False):
    self.workdir, self.what = workdir, what
    # One run per workdir: the lock comes before anything is written there.
    self.lock = WorkdirLock(workdir, log=log)
    self.lock.acquire()
    try:
      paths.makedirs(workdir)
      if is_main_process():
        remove_partial_saves(ckpt.checkpoint_dir(workdir))
      self.async_save = async_save
      self.checkpointer = integrity.open_checkpointer(
          ckpt.checkpoint_dir(workdir), set_aside=resume, log=log, keep=keep,
          async_save=async_save)
      # The newest step whose meta reads; resuming, newer damaged steps are moved aside.
      self.latest, self.saved_meta = integrity.newest_meta(self.checkpointer, set_aside=resume,
                                                           log=log)
    except BaseException:
      self.lock.release()
      raise
    self.resume = resume
    self.stop = StopRequest()
    self.saved_step: int | None = None
    self.metrics_log: reporting.MetricsLog | None = None
    self.progress: reporting.Progress | None = None
    self.trackers = Trackers(workdir, enabled=False)

  # ---------------------------------------------------------------- start
  def refuse_unless_resuming(self) -> None:
    """A workdir that holds a checkpoint is continued only with --resume."""
    if self.latest is not None and not self.resume:
      raise UserError(f"Workdir {self.workdir!r} already holds a checkpoint (step "
                      f"{self.latest}). Pass --resume to continue it, or choose another "
                      "--workdir.")

  def restore(self, abstract_a, abstract_b) -> tuple[Any, Any, dict]:
    """The newest intact checkpoint's two trees (on the abstract trees'
    shardings) and meta; each newer step that fails its checksums is moved
    aside with one warning line."""
    self.latest, a, b, meta = integrity.restore_newest_intact(self.checkpointer, abstract_a,
                                                              abstract_b, log=log)
    return a, b, meta

  def open_log(self, start: int, total_steps: int, config=None) -> None:
    """The metrics log (truncated after `start`: a resumed run rewrites what
    came after its checkpoint; a fresh one starts a new log), the progress
    line, the optional trackers (`config.tracking`), and the whole config as
    `config.json` in the workdir."""
    self.metrics_log = reporting.MetricsLog(paths.join(self.workdir, "metrics.jsonl"),
                                            is_main_process())
    self.metrics_log.truncate_after(start if start else -1)
    self.progress = reporting.Progress(total_steps, is_main_process())
    self.saved_step = start
    if config is not None:
      config_json = json.loads(config.to_json_best_effort())
      if is_main_process():
        paths.write_text(paths.join(self.workdir, "config.json"),
                         json.dumps(config_json, indent=2) + "\n")
      self.trackers = Trackers(self.workdir, config.get("tracking"), run_config=config_json,
                               enabled=is_main_process(), say=log)

  def __enter__(self) -> "Session":
    self.stop.install()
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      if exc_type is None:
        self.wait()
      else:   # already failing: finish what was saved, without masking the error
        try:
          self.checkpointer.wait()
        except Exception:  # noqa: BLE001
          pass
    finally:
      self.stop.restore()
      self.trackers.close()
      self.lock.release()

  def wait(self) -> None:
    """Until every save has finished; a failed one raises `SaveFailed`."""
    try:
      self.checkpointer.wait()
    except Exception as e:  # noqa: BLE001
      raise self._save_failed(self.saved_step, e, getattr(self, "_last_trees", ())) from None

  # ---------------------------------------------------------------- each step
  def record(self, metrics: dict) -> None:
    self.metrics_log.write(metrics)
    self.trackers.log(metrics)

  def note(self, step: int, metrics: dict) -> None:
    """An evaluation's numbers on their own line (after the progress line)."""
    self.progress.newline()
    log(f"step {step}: {fmt_metrics(metrics)}")

  def save(self, step: int, a, b, meta: dict) -> None:
    """Checkpoint `step` (both trees and meta), unless it is already saved. A
    save that fails (a full disk, a lost mount) stops the run at once with one
    line: the last good checkpoint, the space the save needs, how to resume."""
    if step == self.saved_step:
      return
    self.check_saves()   # an earlier asynchronous save that failed stops the run here
    try:
      self.checkpointer.save(step, a, b, meta)
    except Exception as e:  # noqa: BLE001 (any write error; reported in one line)
      raise self._save_failed(step, e, (a, b)) from None
    self.saved_step = step
    self._last_trees = (a, b)

  def check_saves(self) -> None:
    """Raise `SaveFailed` if an asynchronous save has failed since the last check."""
    if not self.async_save or self.saved_step is None:
      return
    try:
      self.checkpointer.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._save_failed(self.saved_step, e, getattr(self, "_last_trees", ())) from None

  def _save_failed(self, step: int, error: Exception, trees) -> SaveFailed:
    directory = self.checkpointer.directory
    try:   # saves still in flight finish (or fail) before anything is cleaned up
      self.checkpointer.wait()
    except Exception:  # noqa: BLE001 (the failure being reported)
      pass
    if is_main_process():
      remove_partial_saves(directory)
    good = [s for s in finished_steps(directory) if s != step]
    need = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(trees))
    free = ""
    if not paths.is_remote(directory):
      try:
        free = f", {shutil.disk_usage(directory).free / 2**20:,.0f} MB free there"
      except OSError:
        pass
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    last = (f"the last good checkpoint is step {max(good)} ({paths.join(directory, str(max(good)))})"
            if good else "no earlier checkpoint was saved")
    launcher = LAUNCHERS.get(self.what, "the same launcher")
    return SaveFailed(
        f"Saving checkpoint {step} of this {self.what} run failed ({reason}); {last}. The save "
        f"needs about {need / 2**20:,.1f} MB{free}. Free some space (or use a --workdir on a "
        f"larger disk), then continue: python {launcher} --workdir {self.workdir} --resume")

  def stop_requested(self, step: int | None = None, every: int = 1) -> bool:
    """Ctrl-C or SIGTERM on any process. With several processes they agree
    only at steps that are multiples of `every` (a collective), so all leave
    the loop at the same step."""
    self.check_saves()
    if jax.process_count() > 1 and step is not None and step % every:
      return False
    return parallel.any_process(self.stop.requested)

  def interrupted(self, step: int, a, b, meta: dict) -> None:
    """Save `step` and say how to continue."""
    self.save(step, a, b, meta)
    self.wait()
    self.progress.newline()
    log(f"Interrupted: saved step {step} to {self.checkpointer.directory}; continue with "
        "--resume.")

  # ---------------------------------------------------------------- end
  def finish(self) -> None:
    self.progress.newline()
    self.trackers.close()

  def close(self) -> None:
    self.checkpointer.close()
    self.lock.release()

  def plot(self, name: str, panels: list[tuple[str, list[str]]] | None = None) -> str | None:
    """loss.png (`panels` None) or a chart of the named series, from metrics.jsonl."""
    if not is_main_process():
      return None
    path = paths.join(self.workdir, name)
    records = self.metrics_log.read()
    if panels is None:
      return reporting.plot_losses(records, path)
    return reporting.plot_series(records, path, panels)


def finished_steps(directory: str) -> list[int]:
  """Steps saved completely in a checkpoints/ directory (read from disk)."""
  if not paths.isdir(directory):
    return []
  return sorted(int(n) for n in paths.listdir(directory)
                if n.isdigit() and paths.finished(paths.join(directory, n)))


def remove_partial_saves(directory: str) -> list[str]:
  """Delete what an interrupted or failed save left (`<step>.orbax-checkpoint-tmp*`):
  Orbax ignores it, but it holds the space. Local directories only; said on the console."""
  if paths.is_remote(directory) or not os.path.isdir(directory):
    return []
  partial = sorted(n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n)
  for name in partial:
    shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  if partial:
    log(f"Removed {len(partial)} unfinished checkpoint director"
        f"{'y' if len(partial) == 1 else 'ies'} left by an interrupted save: {', '.join(partial)}")
  return partial
