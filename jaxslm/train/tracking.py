"""Optional experiment tracking: TensorBoard event files and Weights & Biases.

`metrics.jsonl` stays the record of every run; these mirror its numeric
fields, step by step, for people whose curves live in TensorBoard or W&B.
Neither is needed for anything else, and neither is imported unless asked for:

    --config.tracking.tensorboard=True      # <workdir>/tensorboard/ (tensorboardX)
    --config.tracking.wandb_project=NAME    # W&B run in NAME (wandb installed)
    --config.tracking.wandb_mode=offline    # W&B without a network; `wandb sync` later

A resumed run appends to the same TensorBoard directory and continues the same
W&B run (its id is kept in `<workdir>/wandb_run_id`). Only process 0 writes.
Text and None fields are not mirrored; NaN or infinite numbers are counted and
said once when the run closes.
"""

from __future__ import annotations

import math
import os
from typing import Any

from jaxslm import paths
from jaxslm.errors import UserError

WANDB_MODES = ("online", "offline", "disabled")


def scalars(record: dict, nonfinite: list | None = None) -> dict[str, float]:
  """The finite numeric fields of a metrics record, step left out; the names of
  numeric fields that are NaN or infinite go to `nonfinite` (TensorBoard and
  W&B would draw them as gaps or break the axis; metrics.jsonl keeps them)."""
  out = {}
  for k, v in record.items():
    if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
      continue
    if math.isfinite(v):
      out[k] = float(v)
    elif nonfinite is not None:
      nonfinite.append(k)
  return out


class Trackers:
  """TensorBoard and/or W&B writers for one run (all no-ops when neither is on)."""

  def __init__(self, workdir: str, section: Any = None, *, run_config: dict | None = None,
               name: str = "", enabled: bool = True, say=print):
    section = section if section is not None else {}
    self.tb = self.wandb_run = None
    self.say, self.nonfinite, self.first_nonfinite = say, 0, None
    if not enabled:
      return
    if section.get("tensorboard", False):
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        raise UserError("tracking.tensorboard=True needs the tensorboardX package: pip install "
                        "tensorboardX (or set tracking.tensorboard=False).") from None
      self.tb = SummaryWriter(logdir=paths.join(workdir, "tensorboard"))
    project = section.get("wandb_project", "")
    if project:
      mode = section.get("wandb_mode", "online")
      if mode not in WANDB_MODES:
        raise UserError(f"tracking.wandb_mode={mode!r}; valid modes: {', '.join(WANDB_MODES)}.")
      try:
        import wandb
      except ImportError:
        raise UserError("tracking.wandb_project is set but wandb is not installed: pip install "
                        "wandb (or set tracking.wandb_project='').") from None
      run_id = _wandb_run_id(workdir)
      self.wandb_run = wandb.init(project=project, name=name or os.path.basename(
          os.path.abspath(workdir)), id=run_id, resume="allow", dir=workdir, mode=mode,
          config=run_config or {})

  @property
  def active(self) -> bool:
    return self.tb is not None or self.wandb_run is not None

  def log(self, record: dict) -> None:
    if not self.active or "step" not in record:
      return
    bad: list[str] = []
    step, values = int(record["step"]), scalars(record, bad)
    if bad:
      self.nonfinite += len(bad)
      self.first_nonfinite = self.first_nonfinite or (bad[0], step)
    if self.tb is not None:
      for k, v in values.items():
        self.tb.add_scalar(k, v, step)
      self.tb.flush()
    if self.wandb_run is not None and values:
      self.wandb_run.log(values, step=step)

  def close(self) -> None:
    if self.nonfinite and self.active:
      key, step = self.first_nonfinite
      self.say(f"tracking: {self.nonfinite} NaN or infinite value(s) not mirrored to "
               f"TensorBoard/W&B (first: {key} at step {step}); metrics.jsonl has them")
      self.nonfinite = 0
    if self.tb is not None:
      self.tb.close()
      self.tb = None
    if self.wandb_run is not None:
      self.wandb_run.finish()
      self.wandb_run = None


def _wandb_run_id(workdir: str) -> str:
  """The W&B run id of this workdir, made once and kept, so --resume continues the run."""
  import secrets
  path = paths.join(workdir, "wandb_run_id")
  if paths.exists(path):
    run_id = paths.read_text(path).strip()
    if run_id:
      return run_id
  run_id = secrets.token_hex(8)
  paths.write_text(path, run_id)
  return run_id
