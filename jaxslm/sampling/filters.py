"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p.

Every knob is a per-row array, so one compiled function serves a batch in
which each sequence has its own temperature (GRPO's schedule) or filters.
Which filters exist at all is static (`Filters`), so a plain temperature
sampler never pays for the sort that top-p needs.

Order of operations (as in Hugging Face's samplers): divide by the
temperature, keep the top-k, keep the smallest prefix whose probability mass
reaches top-p (among the top-k survivors), then drop tokens whose probability
is below min-p times the most likely token's. A row with temperature 0 is
greedy: the argmax of the raw logits, whatever the filters say. Tokens tied
with the last one kept by top-k / top-p are kept too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Filters:
  """Static switches (part of the compile key)."""
  greedy_only: bool = True   # every row has temperature 0: no random numbers at all
  top_k: int = 0             # 0: off; else the largest k any row asks for (a static bound)
  top_p: bool = False
  min_p: bool = False
  vocab: int = 0             # 0: any id; else ids >= vocab (a padded embedding's rows past
                             # the tokenizer, which it cannot decode) are never chosen


def filter_logits(logits_bv, temperature_b, top_k_b, top_p_b, min_p_b, filters: Filters):
  """Temperature-scaled logits with -inf outside each row's allowed set."""
  scaled_bv = logits_bv / jnp.maximum(temperature_b, 1e-6)[:, None]
  keep_bv = jnp.ones(scaled_bv.shape, bool)
  if filters.top_k or filters.top_p:
    if filters.top_p:
      sorted_bv = -jnp.sort(-scaled_bv, axis=-1)           # descending, full vocabulary
    else:
      sorted_bv = jax.lax.top_k(scaled_bv, filters.top_k)[0]
    rank = jnp.arange(sorted_bv.shape[-1], dtype=jnp.int32)
    if filters.top_k:
      # k <= 0 on a row means "no top-k" there.
      k_b = jnp.where(top_k_b > 0, jnp.minimum(top_k_b, sorted_bv.shape[-1]), sorted_bv.shape[-1])
      sorted_bv = jnp.where(rank[None] < k_b[:, None], sorted_bv, _NEG)
    if filters.top_p:
      probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
      mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
      # Keep a token while the mass before it is below p (the first always; all when p = 1,
      # so float rounding in the cumulative sum never drops a tail token).
      keep_sorted_bv = ((mass_before_bv < top_p_b[:, None]) | (rank[None] == 0)
                        | (top_p_b[:, None] >= 1.0))
      sorted_bv = jnp.where(keep_sorted_bv, sorted_bv, _NEG)
    kept_b = jnp.sum(sorted_bv > _NEG, axis=-1)
    threshold_b = jnp.take_along_axis(sorted_bv, (kept_b - 1)[:, None], axis=-1)[:, 0]
    if not filters.top_p:  # only the top `filters.top_k` were looked at: rows without top-k keep all
      threshold_b = jnp.where(top_k_b > 0, threshold_b, _NEG)
    keep_bv &= scaled_bv >= threshold_b[:, None]
  if filters.min_p:
    # p >= min_p * p_max  <=>  logit >= max logit + log(min_p)
    best_b = jnp.max(jnp.where(keep_bv, scaled_bv, _NEG), axis=-1)
    floor_b = best_b + jnp.log(jnp.maximum(min_p_b, 1e-30))
    keep_bv &= (scaled_bv >= floor_b[:, None]) | (min_p_b[:, None] <= 0)
  return jnp.where(keep_bv, scaled_bv, _NEG)


def argmax(x_bv: jax.Array) -> jax.Array:
  """First index of each row's maximum, as `jnp.argmax`, from two plain
  reductions (max, then min over matching indices): on XLA:CPU this is several
  times faster than argmax's variadic reduce over a 50k vocabulary."""
  best_b = jnp.max(x_bv, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, x_bv.shape, x_bv.ndim - 1)
  return jnp.min(jnp.where(x_bv == best_b, iota, x_bv.shape[-1]), axis=-1)


def choose(logits_bv, keys_b, temperature_b, top_k_b, top_p_b, min_p_b, filters: Filters):
  """The next token of every row: argmax where temperature is 0, else a draw
  from the filtered distribution with the row's own key."""
  if filters.vocab:
    iota = jax.lax.broadcasted_iota(jnp.int32, logits_bv.shape, logits_bv.ndim - 1)
    logits_bv = jnp.where(iota < filters.vocab, logits_bv, _NEG)
  greedy_b = argmax(logits_bv)
  if filters.greedy_only:
    return greedy_b
  masked_bv = filter_logits(logits_bv, temperature_b, top_k_b, top_p_b, min_p_b, filters)
  drawn_b = jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys_b, masked_bv)
  return jnp.where(temperature_b > 0, drawn_b.astype(jnp.int32), greedy_b)
