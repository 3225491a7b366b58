"""Batches of token windows for pretraining and evaluation.

A batch row is a window of ``seq_len + 1`` consecutive tokens; the trainer uses
``row[:-1]`` as inputs and ``row[1:]`` as targets. Rows are int32, shape
``[local_batch_size, seq_len + 1]``.

Multi-host: the global batch at a step is a pure function of (seed, step) and
process ``p`` of ``P`` takes global rows ``[p * local, (p + 1) * local)`` with
``local = global_batch_size // P``, reading only those rows from the (memory
mapped) token array. Concatenating every process's batch gives the ``P = 1``
batch, so changing the number of hosts does not change the data, and resuming
at step ``k`` needs nothing but ``k``.
"""

from __future__ import annotations

import numpy as np
from jaxslm.errors import UserError


def _check_process(global_batch_size: int, process_index: int, process_count: int,
                   what: str) -> int:
  if global_batch_size <= 0:
    raise UserError(f"{what}={global_batch_size} must be positive.")
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise UserError(f"process_index={process_index} must be in [0, process_count="
                     f"{process_count}).")
  if global_batch_size % process_count:
    raise UserError(f"{what}={global_batch_size} is not divisible by process_count="
                     f"{process_count}; use a multiple of {process_count} (e.g. "
                     f"{(global_batch_size // process_count + 1) * process_count}).")
  return global_batch_size // process_count


def _check_tokens(tokens: np.ndarray, seq_len: int, what: str) -> None:
  if seq_len <= 0:
    raise UserError(f"seq_len={seq_len} must be positive.")
  if tokens.ndim != 1:
    raise UserError(f"{what} tokens must be a 1-D array, got shape {tokens.shape}.")
  if tokens.shape[0] < seq_len + 1:
    raise UserError(f"{what} split has {tokens.shape[0]:,} tokens, fewer than seq_len + 1 = "
                     f"{seq_len + 1:,}; use more data or a smaller seq_len.")


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
  """Rows ``tokens[s : s + seq_len + 1]`` for each start, as int32 (reads only those rows)."""
  index = starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
  return np.asarray(tokens[index], dtype=np.int32)


class BatchSampler:
  """Random training windows; ``batch(step)`` depends only on (seed, step, process).

  Window starts are drawn uniformly from every valid start ``[0, len - seq_len - 1]``
  with ``np.random.default_rng([seed, step])``, independently per row (windows
  may overlap, as in nanoGPT-style samplers).
  """

  def __init__(self, tokens: np.ndarray, *, seq_len: int, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self.local_batch_size = _check_process(global_batch_size, process_index, process_count,
                                           "global_batch_size")
    _check_tokens(tokens, seq_len, "training")
    if seed < 0:
      raise UserError(f"seed={seed} must be >= 0.")
    self.tokens = tokens
    self.seq_len = int(seq_len)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.num_starts = int(tokens.shape[0]) - self.seq_len

  def starts(self, step: int) -> np.ndarray:
    """The global batch's window starts at ``step`` (all processes agree on them)."""
    if step < 0:
      raise UserError(f"step={step} must be >= 0.")
    rng = np.random.default_rng([self.seed, int(step)])
    return rng.integers(0, self.num_starts, size=self.global_batch_size, dtype=np.int64)

  def batch(self, step: int) -> np.ndarray:
    """This process's rows of the global batch at ``step``: int32 [local, seq_len + 1]."""
    lo = self.process_index * self.local_batch_size
    local = self.starts(step)[lo:lo + self.local_batch_size]
    return _gather(self.tokens, local, self.seq_len)


def eval_batches(tokens: np.ndarray, *, seq_len: int, batch_size: int, num_batches: int | None,
                 process_index: int = 0, process_count: int = 1) -> list[np.ndarray]:
  """A fixed, deterministic list of validation batches (this process's rows).

  The split holds ``W = (len - 1) // seq_len`` windows that start at multiples of
  ``seq_len``; consecutive windows share one boundary token, so every target
  token is predicted at most once (no overlap). ``batch_size`` is the global
  batch size and must be divisible by ``process_count``.

  - If ``W >= batch_size * num_batches``: that many windows, evenly spaced
    over the whole split.
  - Otherwise (or when ``num_batches`` is None): every window, in order,
    forming ``W // batch_size`` full batches; the ``W % batch_size`` windows
    left over are dropped (windows are never repeated, and batches keep one
    shape). ValueError if not even one full batch fits.
  """
  local = _check_process(batch_size, process_index, process_count, "batch_size")
  _check_tokens(tokens, seq_len, "validation")
  if num_batches is not None and num_batches <= 0:
    raise UserError(f"num_batches={num_batches} must be positive (or None for all windows).")
  windows = (int(tokens.shape[0]) - 1) // seq_len
  if num_batches is not None and windows >= batch_size * num_batches:
    need = batch_size * num_batches
    index = np.arange(need, dtype=np.int64) * windows // need
  else:
    if windows < batch_size:
      raise UserError(
          f"the validation split has {tokens.shape[0]:,} tokens = {windows} windows of "
          f"seq_len + 1 = {seq_len + 1}, fewer than one batch of {batch_size}; use a smaller "
          f"eval batch size or seq_len, or a larger data.val_fraction.")
    index = np.arange(windows // batch_size * batch_size, dtype=np.int64)
  starts = index.reshape(-1, batch_size) * seq_len
  lo = process_index * local
  return [_gather(tokens, row[lo:lo + local], seq_len) for row in starts]
