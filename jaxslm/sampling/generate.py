"""`generate`: batched sampling from token ids, the host side of the engine.

    out = generate(model_cfg, params, [ids_a, ids_b], max_new_tokens=64,
                   temperature=[0.6, 0.8, 1.0, 1.2], n=4, seed=0, tokenizer=tok,
                   stop_strings=["\\nQuestion:"])
    out.texts                  # prompt-major: prompt i's completion j is out.completions[i * n + j]
    out.completions[0].tokens, .logprobs, .finish_reason

What happens: validate; left-truncate (only if asked, and only a prompt that
leaves too little of the context to write in); bucket the batch and the token
budget to powers of two and the prompt length with `engine.prompt_bucket` (so
a new prompt length rarely recompiles); `engine.prefill`; then `engine.decode`
in chunks. The host looks after each chunk (or pause): it cuts rows at stop
strings, queues the value of a just-written `<<expr=` as forced tokens for the
calculator hook, and once most rows are done moves the rest to a smaller batch
(compaction). A single row without stop strings, the calculator or a stream
callback runs its whole budget in one call (the loop never leaves the device).

Reproducibility: prompt i's completion j draws from
fold_in(fold_in(PRNGKey(s), c), j) with (s, c) = (seed, i), or (seeds[i], 0) when
`seed` is a list: the random draws of a completion depend on its seed, its
prompt's position i (for an int seed) and its index j, never on the rest of the
batch or on the padding. (Other prompts can change the bucketed shapes and so
the float rounding of the logits; in float32 the tests see no token change.)
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm.errors import UserError
from jaxslm.models import ModelConfig
from jaxslm.sampling import engine
from jaxslm.sampling.filters import Filters
from jaxslm.sampling.result import Completion, Generation  # noqa: F401 (re-exported)

_QUEUE_LEN = 16                   # longest calculator result, in tokens
_CALC_PATTERN = re.compile(r"<<([^<>=\n]{1,200})=\Z")


def bucket(x: int, minimum: int = 8) -> int:
  """The next power of two >= max(x, minimum)."""
  return 1 << max(int(x), minimum, 1).__sub__(1).bit_length()


def _per_row(name, value, n_prompts, n, cast):
  """A scalar, one value per completion index (n), or one per row (prompts * n)."""
  if np.ndim(value) == 0:
    return np.full(n_prompts * n, cast(value))
  vals = [cast(v) for v in value]
  if len(vals) == n:
    return np.tile(np.array(vals), n_prompts)
  if len(vals) == n_prompts * n:
    return np.array(vals)
  raise UserError(f"{name} has {len(vals)} values; give one number, n={n} (one per completion "
                  f"of each prompt) or len(prompts) * n = {n_prompts * n} (one per row).")


def _check_settings(temperature_r, top_k, top_p, min_p):
  if np.any(~np.isfinite(temperature_r)) or np.any(temperature_r < 0):
    raise UserError(f"temperature={temperature_r.tolist()} is invalid: expected finite values "
                    ">= 0 (0 means greedy).")
  if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
    raise UserError(f"top_k={top_k!r} is invalid: expected an int >= 1, or None for no top-k.")
  if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
    raise UserError(f"top_p={top_p!r} is invalid: expected 0 < top_p <= 1 (1 disables it).")
  if not isinstance(min_p, (int, float)) or not 0 <= min_p < 1:
    raise UserError(f"min_p={min_p!r} is invalid: expected 0 <= min_p < 1 (0 disables it).")


def _prepare_prompts(prompts, model_cfg: ModelConfig, max_new_tokens: int, truncate: bool,
                     min_budget: int):
  """(prompts as int lists, indices of those cut). A prompt is cut (truncate=True)
  only when it leaves fewer than min(max_new_tokens, min_budget) tokens of
  the context; otherwise its budget shrinks to the rest of the context."""
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
    raise UserError("prompts must be a non-empty list of token-id lists "
                    "(use jaxslm.sample for text).")
  out, cut = [], []
  ctx = model_cfg.max_seq_len
  keep = ctx - max(1, min(max_new_tokens, min_budget, ctx - 1))
  for i, p in enumerate(prompts):
    ids = np.asarray(p)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
      raise UserError(f"prompt {i} is empty or not a 1-D list of token ids (got shape "
                      f"{ids.shape}, dtype {ids.dtype}); every prompt needs at least one token.")
    if ids.min() < 0 or ids.max() >= model_cfg.vocab_size:
      raise UserError(f"prompt {i} has token id {int(ids.max() if ids.max() >= 0 else ids.min())} "
                      f"outside [0, {model_cfg.vocab_size}): wrong tokenizer for this model?")
    if truncate and ids.size > keep:
      warnings.warn(f"prompt {i}: {ids.size} tokens leave fewer than {ctx - keep} of the "
                    f"context of {ctx} for new tokens; keeping its last {keep} tokens.",
                    stacklevel=3)
      ids = ids[-keep:]
      cut.append(i)
    elif ids.size >= ctx:
      raise UserError(f"prompt {i} has {ids.size} tokens but the model's context is {ctx} "
                      f"(max_seq_len), leaving no room to generate; shorten it or pass "
                      f"truncate=True to keep its last {keep} tokens.")
    out.append(ids.astype(np.int32).tolist())
  return out, cut


def _pause_table(tokenizer, vocab_size: int) -> np.ndarray:
  """Tokens whose text ends with '=': after one, the host checks for `<<expr=`."""
  cache = getattr(tokenizer, "_jaxslm_pause_eq", None)
  if cache is None or cache.shape[0] != vocab_size:
    cache = np.zeros(vocab_size, bool)
    for i in range(min(vocab_size, tokenizer.vocab_size)):
      try:
        cache[i] = tokenizer.decode([i]).endswith("=")
      except Exception:  # special ids some tokenizers refuse to decode alone
        pass
    tokenizer._jaxslm_pause_eq = cache
  return cache


def generate(model_cfg: ModelConfig, params, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int = 64, temperature=0.0, top_k: int | None = None,
             top_p: float = 1.0, min_p: float = 0.0, n: int = 1, seed=0,
             eos_id: int | None = None, stop_token_ids: Sequence[int] = (),
             stop_strings: Sequence[str] = (), tokenizer=None, calculator: bool = False,
             truncate: bool = False, min_budget: int = 16, pad_id: int = 0,
             chunk_size: int | None = None,
             on_tokens: Callable[[int, list[int]], None] | None = None,
             logprobs: bool = True, share_prefix: bool = True,
             compact: bool | int = True) -> Generation:
  """Sample `n` completions for each prompt (lists of token ids); see the module doc.

  temperature: one value, one per completion index (n values, e.g. GRPO's
  [0.6, 0.8, 1.0, 1.2]) or one per row; 0 is greedy. top_k (>= 1 or None),
  top_p in (0, 1], min_p in [0, 1). Stops: `eos_id`, `stop_token_ids`,
  `stop_strings` (needs `tokenizer`; cut from the text), `max_new_tokens`, the
  context. `calculator=True` (needs `tokenizer`): after the model writes
  `<<expr=`, the value of expr is written for it (GSM8K's calculator).
  `on_tokens(row, new_ids)` streams each row's new tokens after every chunk of
  `chunk_size` steps. With a `tokenizer` smaller than the model's (padded)
  embedding, ids past the tokenizer are never chosen, greedy included.

  Budget: a prompt of L tokens gets min(max_new_tokens, context - L) new
  tokens (a row that reaches the end of the context finishes "context"). A
  prompt that fills the context raises; with `truncate=True` a prompt that
  leaves fewer than min(max_new_tokens, min_budget) tokens is cut to its
  last tokens instead, with a warning, and listed in `Generation.truncated`.
  `logprobs=False` skips computing Completion.logprobs (NaN then).

  Shared prefix: when the prompts start with the same SHARE_ALIGN or more tokens
  (a few-shot preamble), the prefill runs those once instead of once per prompt
  (`shared_prefix`), in multiples of SHARE_ALIGN (see `engine.prefill`);
  `share_prefix=False` runs every prompt whole.

  Compaction: rows decode in lockstep, so a batch runs until its longest row
  ends. Once at most half of the rows still run, with COMPACT_MIN_STEPS or more
  of the budget left, the live rows go on alone in the smallest batch bucket
  that holds them (`engine.take_rows`; `timing["compactions"]` lists [step,
  rows]). Each row keeps its key and cache, so its draws are unchanged.
  `compact=False` keeps the whole batch to the end; an int sets the steps that
  must remain (0: compact whenever possible).
  """
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
    raise UserError(f"n={n!r} is invalid: expected the number of completions per prompt, >= 1.")
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise UserError(f"max_new_tokens={max_new_tokens!r} is invalid: expected an int >= 1.")
  if (isinstance(min_budget, bool) or not isinstance(min_budget, (int, np.integer))
      or min_budget < 1):
    raise UserError(f"min_budget={min_budget!r} is invalid: expected an int >= 1.")
  prompts, cut = _prepare_prompts(prompts, model_cfg, max_new_tokens, truncate, min_budget)
  temperature_r = _per_row("temperature", temperature, len(prompts), n, float)
  _check_settings(temperature_r, top_k, top_p, min_p)
  if (stop_strings or calculator) and tokenizer is None:
    raise UserError("stop_strings and calculator need the tokenizer: pass tokenizer=...")
  if isinstance(stop_strings, str):
    stop_strings = [stop_strings]
  if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
    raise UserError(f"chunk_size={chunk_size!r} is invalid: expected an int >= 1 or None.")
  if not isinstance(pad_id, (int, np.integer)) or not 0 <= pad_id < model_cfg.vocab_size:
    raise UserError(f"pad_id={pad_id!r} is invalid: expected a token id in [0, "
                    f"{model_cfg.vocab_size}) (it is fed for padding, so it must embed).")
  if any(not isinstance(s, str) or not s for s in stop_strings):
    raise UserError(f"stop_strings={list(stop_strings)!r}: expected non-empty strings.")
  seeds = _seeds(seed, len(prompts))
  min_left = _compact_threshold(compact)

  # Buckets: batch, shared prefix, prompt length (after it), token budget.
  b = bucket(len(prompts), 1)
  c = shared_prefix_length(prompts) if share_prefix else 0
  # Never more slots than the prompts would take whole (what the token budget counted).
  longest = max(len(x) for x in prompts)
  p = min(c + engine.prompt_bucket(longest - c), engine.prompt_bucket(longest))
  # No row can outlive the context, so the budget bucket never exceeds what is left of it.
  m = bucket(min(max_new_tokens, model_cfg.max_seq_len - min(len(x) for x in prompts)))
  tokens_bp = np.full((b, p), pad_id, np.int32)
  lengths_b = np.ones(b, np.int32)
  seeds_b2 = np.zeros((b, 2), np.uint32)
  for i in range(b):
    ids = prompts[i] if i < len(prompts) else prompts[0]
    tokens_bp[i, :c] = ids[:c]
    tokens_bp[i, p - (len(ids) - c):] = ids[c:]
    lengths_b[i] = len(ids)
    seeds_b2[i] = seeds[i] if i < len(prompts) else (0, 0)
  rows, real_rows = b * n, len(prompts) * n
  pad_r = lambda x, fill: np.concatenate([x, np.full(rows - real_rows, fill, x.dtype)])
  stop_ids = sorted({int(t) for t in stop_token_ids})
  settings = {
      "temperature_b": jnp.asarray(pad_r(temperature_r.astype(np.float32), 0.0)),
      "top_k_b": jnp.full((rows,), top_k or 0, jnp.int32),
      "top_p_b": jnp.full((rows,), top_p, jnp.float32),
      "min_p_b": jnp.full((rows,), min_p, jnp.float32),
      "stop_ids_k": jnp.asarray(np.array(stop_ids or [-1], np.int32)),
      "eos_id": jnp.int32(-1 if eos_id is None else eos_id),
      "pad_id": jnp.int32(pad_id),
      "max_new": jnp.int32(min(max_new_tokens, 2**31 - 1)),
      "pause_v": jnp.asarray(_pause_table(tokenizer, model_cfg.vocab_size) if calculator
                             else np.zeros((1,), bool)),
  }
  filters = Filters(greedy_only=bool(np.all(temperature_r == 0)),
                    top_k=0 if top_k is None else min(bucket(top_k, 1), model_cfg.vocab_size),
                    top_p=top_p < 1.0, min_p=min_p > 0.0,
                    vocab=_decodable_ids(tokenizer, model_cfg.vocab_size))

  t0 = time.perf_counter()
  state = engine.prefill(params, jnp.asarray(tokens_bp), jnp.asarray(lengths_b),
                         jnp.asarray(seeds_b2), model_cfg=model_cfg, n=n, max_new=m,
                         queue_len=_QUEUE_LEN, shared=c)
  if rows > real_rows:  # batch padding: done from the start, so it never holds the loop up
    state = state.replace(done_b=state.done_b.at[real_rows:].set(True))
  jax.block_until_ready(state.cache)
  t_prefill = time.perf_counter() - t0

  host_work = bool(stop_strings) or calculator or on_tokens is not None
  can_compact = min_left is not None and rows > 1
  chunk = chunk_size or (16 if host_work else COMPACT_CHUNK if can_compact else max_new_tokens)
  lengths_r = np.repeat(lengths_b[:len(prompts)], n)
  cut_r = np.full(real_rows, -1)       # host-decided lengths (stop strings)
  streamed_r = np.zeros(real_rows, int)
  checked_r = np.zeros(real_rows, int)  # tokens already searched for stop strings
  # The state's row i is completion rowmap[i] (-1: padding, done from the start).
  rowmap = np.where(np.arange(rows) < real_rows, np.arange(rows), -1)
  final = _Final(real_rows, m)
  compactions = []
  step = 0
  while True:
    limit = min(max_new_tokens, step + chunk, 2**31 - 1)
    state = engine.decode(params, state, settings, jnp.int32(limit), model_cfg=model_cfg,
                          filters=filters, pause=calculator, logprobs=logprobs)
    step, real = int(state.step), rowmap >= 0
    if host_work:
      orig = np.maximum(rowmap, 0)
      tokens = np.asarray(state.tokens_bm)[:, :step]
      gen_len = np.where(real & (cut_r[orig] >= 0), cut_r[orig],
                         np.asarray(state.pos_b) - lengths_r[orig])
      newly_done = []
      if stop_strings:
        for i in np.flatnonzero(real & (cut_r[orig] < 0) & (gen_len > checked_r[orig])):
          r = rowmap[i]
          k = _stop_string_cut(tokenizer, tokens[i, :gen_len[i]], stop_strings, checked_r[r] + 1)
          checked_r[r] = gen_len[i]
          if k is not None:
            cut_r[r], gen_len[i] = k, k
            newly_done.append(i)
      if calculator and bool(state.paused):
        state = _queue_calculator_results(state, tokenizer, tokens, gen_len,
                                          np.asarray(state.done_b) | ~real, newly_done,
                                          [prompts[r // n] for r in orig])
      if newly_done:
        state = state.replace(done_b=state.done_b.at[np.array(newly_done)].set(True),
                              reason_b=state.reason_b.at[np.array(newly_done)].set(engine.STOP_STRING))
      if on_tokens is not None:
        for i in np.flatnonzero(real):
          r = rowmap[i]
          if gen_len[i] > streamed_r[r]:
            on_tokens(int(r), tokens[i, streamed_r[r]:gen_len[i]].tolist())
            streamed_r[r] = gen_len[i]
    done = np.asarray(state.done_b)
    if done[real].all() or step >= max_new_tokens:
      break
    live = np.flatnonzero(real & ~done)
    left = min(max_new_tokens, m) - step      # no row outlives the budget bucket
    if can_compact and left >= min_left and bucket(len(live), 1) < len(rowmap):
      # Most rows are done: go on with the live ones only, in the smallest batch bucket.
      finished = np.flatnonzero(real & done)
      final.keep(state, finished, rowmap[finished])
      fill = np.flatnonzero(done)[:1]       # a done row pads the bucket (it never runs again)
      keep = np.concatenate([live, np.repeat(fill, bucket(len(live), 1) - len(live))])
      state, settings = engine.take_rows(state, settings, jnp.asarray(keep, jnp.int32))
      rowmap = np.concatenate([rowmap[live], np.full(len(keep) - len(live), -1)])
      compactions.append([step, len(keep)])
  jax.block_until_ready(state.tokens_bm)
  t_total = time.perf_counter() - t0
  rest = np.flatnonzero(rowmap >= 0)
  final.keep(state, rest, rowmap[rest])
  return _collect(final, prompts, cut, n, lengths_r, cut_r, temperature_r, tokenizer, eos_id,
                  stop_ids, stop_strings,
                  {"prefill_s": t_prefill, "decode_s": t_total - t_prefill, "total_s": t_total,
                   "steps": step, "batch_bucket": b, "prompt_bucket": p, "budget_bucket": m,
                   "shared_prefix": c, "compactions": compactions})


# Compaction: once at most half the rows still run (and enough of the budget is
# left to be worth a new decode shape), the live rows go on in a smaller batch.
COMPACT_MIN_STEPS = 64   # budget steps that must remain (each new batch shape compiles once)
COMPACT_CHUNK = 32       # decode steps between looks when the host has nothing else to do


def _compact_threshold(compact) -> int | None:
  if compact is True:
    return COMPACT_MIN_STEPS
  if compact is False or compact is None:
    return None
  if isinstance(compact, (int, np.integer)) and compact >= 0:
    return int(compact)
  raise UserError(f"compact={compact!r} is invalid: expected True, False, or the number of "
                  "budget steps (>= 0) that must remain for a compaction.")


class _Final:
  """Host copies of finished completions' outputs, in completion order."""

  def __init__(self, rows: int, m: int):
    self.tokens = np.zeros((rows, m), np.int32)
    self.logprobs = np.zeros((rows, m), np.float32)
    self.forced = np.zeros((rows, m), bool)
    self.reasons = np.zeros(rows, np.int32)
    self.pos = np.zeros(rows, np.int64)

  def keep(self, state, state_rows, completions):
    if len(state_rows) == 0:
      return
    self.tokens[completions] = np.asarray(state.tokens_bm)[state_rows]
    self.logprobs[completions] = np.asarray(state.logprobs_bm)[state_rows]
    self.forced[completions] = np.asarray(state.forced_bm)[state_rows]
    self.reasons[completions] = np.asarray(state.reason_b)[state_rows]
    self.pos[completions] = np.asarray(state.pos_b)[state_rows]


SHARE_ALIGN = 64   # a shared prefix is run once in multiples of this many tokens


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
  """Tokens every prompt starts with, rounded down to a multiple of SHARE_ALIGN
  (few compiled shapes), leaving each prompt at least its last token; 0 for a
  single prompt or a prefix under SHARE_ALIGN."""
  if len(prompts) < 2:
    return 0
  first, limit = prompts[0], min(len(x) for x in prompts) - 1
  common = 0
  while common < limit and all(x[common] == first[common] for x in prompts):
    common += 1
  return common // SHARE_ALIGN * SHARE_ALIGN


def _seeds(seed, n_prompts: int) -> np.ndarray:
  def u32(x, what):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
      raise UserError(f"{what}={x!r} is invalid: expected an int.")
    return int(x) % (1 << 32)
  if np.ndim(seed) == 0:
    s = u32(seed, "seed")
    return np.array([(s, i) for i in range(n_prompts)], np.uint32)
  if len(seed) != n_prompts:
    raise UserError(f"seed has {len(seed)} values for {n_prompts} prompts: give one int, or one "
                    "per prompt.")
  return np.array([(u32(s, "seed"), 0) for s in seed], np.uint32)


def _decodable_ids(tokenizer, model_vocab: int) -> int:
  """The tokenizer's id count where the model's (padded) embedding is larger,
  so sampling never picks an id the tokenizer cannot decode; else 0 (no limit)."""
  n = getattr(tokenizer, "vocab_size", None) if tokenizer is not None else None
  return int(n) if n is not None and 0 < n < model_vocab else 0


def _stop_string_cut(tokenizer, ids: np.ndarray, stops, start: int) -> int | None:
  """Fewest tokens whose text contains a stop string (None if none does)."""
  text = tokenizer.decode(ids)
  if not any(s in text for s in stops):
    return None
  for k in range(max(start, 1), len(ids) + 1):   # the stop string ends in a new token
    if any(s in tokenizer.decode(ids[:k]) for s in stops):
      return k
  return len(ids)


def _queue_calculator_results(state, tokenizer, tokens, gen_len, done, skip, prompts):
  from jaxslm import tools  # the safe calculator
  queue = np.asarray(state.queue_bq).copy()
  qlen = np.asarray(state.queue_len_b).copy()
  qpos = np.asarray(state.queue_pos_b).copy()
  changed = False
  for r in range(tokens.shape[0]):
    if done[r] or r in skip or gen_len[r] == 0 or qpos[r] < qlen[r]:
      continue
    tail = tokenizer.decode(prompts[r][-16:]) + tokenizer.decode(tokens[r, :gen_len[r]])
    match = _CALC_PATTERN.search(tail)
    if match is None:
      continue
    try:
      value = tools.format_number(tools.calculate(match.group(1)))
    except (tools.CalculatorError, ValueError):
      continue   # not arithmetic after all: the model writes on by itself
    ids = tokenizer.encode(value)
    if not 0 < len(ids) <= queue.shape[1]:
      continue
    queue[r, :len(ids)] = ids
    qlen[r], qpos[r] = len(ids), 0
    changed = True
  if not changed:
    return state
  return state.replace(queue_bq=jnp.asarray(queue), queue_len_b=jnp.asarray(qlen),
                       queue_pos_b=jnp.asarray(qpos))


def _collect(final: _Final, prompts, truncated, n, lengths_r, cut_r, temperature_r, tokenizer,
             eos_id, stop_ids, stop_strings, timing) -> Generation:
  real_rows = len(prompts) * n
  tokens, logprobs, forced, reasons = final.tokens, final.logprobs, final.forced, final.reasons
  gen_len = final.pos - lengths_r
  completions, new_tokens = [], 0
  for r in range(real_rows):
    k = int(cut_r[r]) if cut_r[r] >= 0 else int(gen_len[r])
    ids = tokens[r, :k].tolist()
    reason = engine.REASONS[int(reasons[r])]
    text = None
    if tokenizer is not None:
      body = ids[:-1] if reason in ("eos", "stop_token") else ids
      text = tokenizer.decode(body)
      if reason == "stop_string":
        text = text[:min(text.find(s) for s in stop_strings if s in text)] if any(
            s in text for s in stop_strings) else text
    new_tokens += k
    completions.append(Completion(
        prompt_index=r // n, sample_index=r % n, tokens=ids,
        logprobs=logprobs[r, :k].copy(), finish_reason=reason, text=text,
        forced=forced[r, :k].copy(), temperature=float(temperature_r[r])))
  timing["new_tokens"] = new_tokens
  return Generation(completions, prompts, n, timing, truncated)
