"""Batches of prompts formed by a token budget rather than a fixed row count.

A generate call holds a KV cache of rows x slots, slots = the padded prompt
(`engine.prompt_bucket` of the longest prompt) + the new tokens. Its memory is
what grows with a batch, so a fixed row count that fits short prompts runs out
of memory on long few-shot ones. `plan` walks prompts in order (sorted by
length by the caller, so batches hold similar lengths) and closes a batch when
one more row would take the call's cache (`call_slots`: in the padded shapes
`generate` compiles) past `token_budget`, or past `max_rows`. A prompt alone
over the budget still runs, alone.

`default_token_budget` is a quarter of the memory the device has free (a GPU's
unused bytes; on a CPU the host's available memory) divided by the KV-cache
bytes of one slot, so the default follows the machine and the model:

  from jaxslm.sampling import batching
  budget = batching.default_token_budget(model_cfg)
  for rows in batching.plan(lengths, max_new_tokens=256, max_rows=64, token_budget=budget):
    ...
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxslm.errors import UserError

MEMORY_FRACTION = 0.25   # of the free device memory, for the KV cache of one call
_FALLBACK_BYTES = 4 << 30


def kv_bytes_per_slot(model_cfg) -> int:
  """KV-cache bytes of one row's slot: keys and values of every layer."""
  kv_heads = model_cfg.n_kv_heads or model_cfg.n_heads
  head_dim = model_cfg.head_dim or model_cfg.d_model // model_cfg.n_heads
  return 2 * model_cfg.n_layers * kv_heads * head_dim * jnp.dtype(model_cfg.dtype).itemsize


def free_memory_bytes(device: jax.Device | None = None) -> int:
  """Free memory of `device` (default: the first): an accelerator's unused bytes,
  or on a CPU the host's available memory (/proc/meminfo, else sysconf)."""
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    try:
      stats = device.memory_stats() or {}
      if "bytes_limit" in stats:
        return max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0)
    except Exception:   # a backend without memory_stats: fall back to the host's view
      pass
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):   # absent or unreadable: ask sysconf
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return _FALLBACK_BYTES


def default_token_budget(model_cfg, device: jax.Device | None = None,
                         fraction: float = MEMORY_FRACTION) -> int:
  """Slots (rows x cache length) one call may hold: `fraction` of the free memory
  over the KV-cache bytes of a slot."""
  return max(int(free_memory_bytes(device) * fraction) // kv_bytes_per_slot(model_cfg), 1)


def call_slots(rows: int, longest: int, max_new_tokens: int, n: int = 1) -> int:
  """KV-cache slots of one `generate` call, in the shapes it compiles: rows
  padded to a power of two, times n, times (prompt bucket + 1 + the new-token
  budget padded to a power of two)."""
  from jaxslm.sampling.engine import prompt_bucket
  from jaxslm.sampling.generate import bucket
  return bucket(rows, 1) * n * (prompt_bucket(longest) + 1 + bucket(max_new_tokens))


def plan(lengths: Sequence[int], *, max_new_tokens: int, max_rows: int, token_budget: int,
         n: int = 1) -> list[list[int]]:
  """Consecutive batches of indices into `lengths` (prompt tokens, in the order
  given): each at most `max_rows` prompts and, unless one prompt alone exceeds
  it, at most `token_budget` slots as `call_slots` counts them.
  `token_budget` 0 or None: rows only."""
  for name, value in (("max_rows", max_rows), ("n", n)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f"{name}={value!r} must be a positive integer.")
  if token_budget is not None and (isinstance(token_budget, bool) or token_budget < 0):
    raise UserError(f"token_budget={token_budget!r} must be a positive number of tokens "
                    "(rows x cache slots), or 0 for batches of max_rows rows.")
  batches: list[list[int]] = []
  current: list[int] = []
  longest = 0
  for i, length in enumerate(lengths):
    grown = max(longest, int(length))
    rows = len(current) + 1
    over = bool(token_budget) and call_slots(rows, grown, max_new_tokens, n) > token_budget
    if current and (rows > max_rows or over):
      batches.append(current)
      current, grown = [], int(length)
    current.append(i)
    longest = grown
  if current:
    batches.append(current)
  return batches
