"""Fine-tuning rows and batches: `pack` (examples back to back, never split),
`pad` (one per row), and `SFTBatches` / `batches` (a batch is a pure
function of (seed, step), so resuming at step k needs nothing but k).

    tokens, weights = pack(encoded, seq_len=256, pad_id=tok.pad_id)
    rows = SFTBatches(tokens, weights, global_batch_size=16, seed=0).batch(step)

`weights[r, t]` weights the prediction of `tokens[r, t + 1]` from position t.
Re-exported by `jaxslm.data.sft`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxslm.errors import UserError


def _check_rows(encoded: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int) -> None:
  if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise UserError(f"seq_len={seq_len!r} must be a positive integer.")
  if not len(encoded):
    raise UserError("no encoded examples to lay out in rows; every example was dropped as "
                    "too long? Raise seq_len (and max_len), or check the data.")
  for i, (ids, mask) in enumerate(encoded):
    if len(ids) != len(mask):
      raise UserError(f"encoded example {i} has {len(ids)} ids but {len(mask)} mask entries.")
    if len(ids) > seq_len + 1:
      raise UserError(f"encoded example {i} has {len(ids)} tokens, more than a row's "
                      f"seq_len + 1 = {seq_len + 1}; encode with max_len={seq_len + 1}.")


def _fill(rows: list[list[int]], encoded, seq_len: int, pad_id: int, return_segments: bool):
  tokens = np.full((len(rows), seq_len + 1), pad_id, np.int32)
  masks = np.zeros((len(rows), seq_len + 1), np.bool_)
  segments = np.zeros((len(rows), seq_len + 1), np.int32)
  for r, members in enumerate(rows):
    at = 0
    for k, i in enumerate(members, 1):
      ids, mask = encoded[i]
      tokens[r, at:at + len(ids)], masks[r, at:at + len(ids)] = ids, mask
      segments[r, at:at + len(ids)] = k
      at += len(ids)
  weights = masks[:, 1:].astype(np.float32)
  return (tokens, weights, segments) if return_segments else (tokens, weights)


def pack(encoded: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int, *,
         return_segments: bool = False):
  """Whole examples first-fit into rows: (tokens int32 [N, seq_len + 1], weights
  float32 [N, seq_len]) (and segment ids int32 [N, seq_len + 1] when asked).

  Examples go in input order, each into the first row with room for it (a new
  row when none has); an example is never split. `weights[r, t]` is the loss
  mask of `tokens[r, t + 1]`; padding weighs 0.
  """
  _check_rows(encoded, seq_len)
  capacity = seq_len + 1
  size = 1 << max(0, (len(encoded) - 1).bit_length())  # leaves >= number of rows needed
  room = [capacity] * (2 * size)  # max free space in each subtree; leaves are rows
  rows: list[list[int]] = []
  for i, (ids, _) in enumerate(encoded):
    need, node = len(ids), 1
    while node < size:  # the leftmost row with room
      node = 2 * node if room[2 * node] >= need else 2 * node + 1
    r = node - size
    if r == len(rows):
      rows.append([])
    rows[r].append(i)
    room[node] -= need
    while node > 1:
      node //= 2
      room[node] = max(room[2 * node], room[2 * node + 1])
  return _fill(rows, encoded, seq_len, pad_id, return_segments)


def pad(encoded: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int, *,
        return_segments: bool = False):
  """One example a row, right-padded with `pad_id`: same arrays as `pack`."""
  _check_rows(encoded, seq_len)
  return _fill([[i] for i in range(len(encoded))], encoded, seq_len, pad_id, return_segments)


# ---------------------------------------------------------------- batches


def batch_rows(num_rows: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """The row indices of global batch `step`: positions [step * B, (step + 1) * B)
  of the endless stream that lists the rows in permutation `perm(seed, epoch)`,
  epoch after epoch. Every N consecutive positions starting at a multiple of N
  hold every row once; a batch may straddle two epochs."""
  if step < 0:
    raise UserError(f"step={step} must be >= 0.")
  positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
  epochs = positions // num_rows
  index = np.empty(batch_size, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(num_rows)
    sel = epochs == e
    index[sel] = perm[positions[sel] % num_rows]
  return index


def batches(tokens: np.ndarray, weights: np.ndarray, batch_size: int, seed: int,
            step: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, T + 1], weights [B, T]) of global batch `step` (see `batch_rows`)."""
  index = batch_rows(len(tokens), batch_size, seed, step)
  return tokens[index], weights[index]


class SFTBatches:
  """Training batches of `pack` / `pad` rows; `batch(step)` depends only on
  (seed, step, process), so resuming at step k needs nothing but k.

  Process p of P takes rows [p * local, (p + 1) * local) of the global batch,
  `local = global_batch_size // P`, as `BatchSampler` does.
  """

  def __init__(self, tokens: np.ndarray, weights: np.ndarray, *, global_batch_size: int,
               seed: int, process_index: int = 0, process_count: int = 1):
    from jaxslm.data.batches import _check_process

    self.local_batch_size = _check_process(global_batch_size, process_index, process_count,
                                           "global_batch_size")
    if tokens.ndim != 2 or weights.shape != (tokens.shape[0], tokens.shape[1] - 1):
      raise UserError(f"tokens {tokens.shape} and weights {weights.shape} must be [N, T + 1] "
                      f"and [N, T], as pack() and pad() return them.")
    if not len(tokens) or seed < 0:
      raise UserError(f"{len(tokens)} rows with seed={seed}: need at least one row (check the "
                      f"data and max_len) and a seed >= 0.")
    self.tokens, self.weights = tokens, weights
    self.global_batch_size, self.seed = int(global_batch_size), int(seed)
    self.process_index = int(process_index)

  num_rows = property(lambda self: len(self.tokens))
  steps_per_epoch = property(lambda self: self.num_rows / self.global_batch_size)

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's (tokens [local, T + 1] int32, weights [local, T] float32) at `step`."""
    index = batch_rows(self.num_rows, self.global_batch_size, self.seed, step)
    lo = self.process_index * self.local_batch_size
    index = index[lo:lo + self.local_batch_size]
    return self.tokens[index], self.weights[index]


