"""The jitted core of the sampler: prefill, then decode with a KV cache.

Layout. Prompts are left-padded to a common bucket length P (`prompt_bucket`)
and the cache gets one more slot in front, so every row's last prompt token
sits in slot P and all rows decode in lockstep. Each row keeps its own
positions (0 at its first real token) and `kv_mask_bs` hides its padding, so a
row computes what it would compute alone. The cache holds S = P + 1 + M slots
(M the bucketed token budget).

`prefill` runs every prompt token but the last into the cache (slots [0, P)),
in chunks of queries whose attention scores fit a fixed budget, so its memory
grows linearly with the prompt (`prefill_chunk`); the last prompt token is the
state's pending token. It replicates the cache for n completions per prompt
and returns a `DecodeState`. `decode` runs the token loop inside
`lax.while_loop` until every row is done, `limit` tokens exist, or a row wrote
a "pause" token the host must look at (the calculator hook); the state is
donated, so the cache is updated in place call after call.

A decode step runs the model on each row's pending token (writing its keys and
values), then picks the next token (a queued forced token if the host put one
there, else `filters.choose`), records it (with its log-probability under the
model, log-softmax of the raw logits at temperature 1, when asked for), decides
whether the row is done, and makes it the pending token. So a call never runs
the model on a token whose logits nobody reads: the last token a call picks is
fed by the next call, if one comes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from jaxslm import ops
from jaxslm.models import Decoder, ModelConfig, init_cache
from jaxslm.sampling.filters import Filters, choose

# finish reasons (codes in `reason_b`)
REASONS = ("running", "eos", "stop_token", "stop_string", "length", "context")
RUNNING, EOS, STOP_TOKEN, STOP_STRING, LENGTH, CONTEXT = range(len(REASONS))


@struct.dataclass
class DecodeState:
  cache: dict            # per layer {"k", "v"}: [B, K, S, H]
  kv_mask_bs: jax.Array  # bool: slot holds a real token
  pos_b: jax.Array       # int32: tokens so far (prompt + generated); pending token at pos_b - 1
  index: jax.Array       # int32 []: slot of the pending token
  next_b: jax.Array      # int32: the pending token: picked (or the prompt's last), not yet fed
  tokens_bm: jax.Array   # int32: generated tokens (pad after a row is done)
  logprobs_bm: jax.Array  # float32: their log-probabilities
  forced_bm: jax.Array   # bool: the token came from the queue, not the model
  step: jax.Array        # int32 []: tokens generated so far (every row, lockstep)
  done_b: jax.Array      # bool
  reason_b: jax.Array    # int32: REASONS index
  keys_b: jax.Array      # uint32 [B, 2]: each row's own PRNG key
  queue_bq: jax.Array    # int32: tokens the host wants written next (calculator results)
  queue_len_b: jax.Array
  queue_pos_b: jax.Array
  paused: jax.Array      # bool []: a row wrote a pause token; the host looks


def _model(model_cfg: ModelConfig) -> Decoder:
  return Decoder(model_cfg.replace(remat=False))


def compute_params(params, model_cfg: ModelConfig):
  """Matrices (2-D leaves) in the compute dtype, once per call instead of once
  per decode step: the model casts them to that dtype before every use anyway,
  so the result is the same, and a bf16 decode step reads half the bytes.
  Vectors (norm scales, biases) stay as they are. A LoRA kernel's base and
  adapters are matrices too; a quantized kernel is left packed (`ops.dense`
  dequantizes it)."""
  dtype = jnp.dtype(model_cfg.dtype)

  def cast(x):
    if (ops.is_quantized(x) or getattr(x, "ndim", 0) != 2
        or not jnp.issubdtype(x.dtype, jnp.floating)):
      return x
    return x.astype(dtype)
  return jax.tree.map(cast, params, is_leaf=ops.is_quantized)


# Attention scores of one prefill chunk ([B, N, C, S] float32) stay under this.
PREFILL_SCORE_BYTES = 256 * 2**20
_MIN_BUCKET, _FINE_FROM = 8, 256


def prompt_bucket(n: int, minimum: int = _MIN_BUCKET) -> int:
  """Padded prompt length for n tokens: powers of two up to 256, then multiples
  of a quarter of the enclosing power of two (320, 384, ..., 640, 768, 896,
  1024, 1280, ...): padding wastes under 25% of a long prompt and each
  doubling of the length adds at most 4 shapes to compile."""
  n = max(int(n), minimum, 1)
  p = 1 << (n - 1).bit_length()
  if p <= _FINE_FROM:
    return p
  step = p // 8          # n is in (p/2, p]: steps of a quarter of p/2
  return -(-n // step) * step


def prompt_buckets(limit: int, minimum: int = _MIN_BUCKET) -> list[int]:
  """Every prompt bucket up to `limit` tokens: the shapes prefill compiles for."""
  return sorted({prompt_bucket(n, minimum) for n in range(1, limit + 1)})


def prefill_chunk(b: int, p: int, s: int, model_cfg: ModelConfig) -> int:
  """Queries per prefill chunk: the largest power of two (16 to 512) whose
  [B, N, C, S] float32 attention scores fit PREFILL_SCORE_BYTES and that divides
  P; P itself when the whole prompt fits."""
  per_query = b * model_cfg.n_heads * s * 4
  if p * per_query <= PREFILL_SCORE_BYTES:
    return p
  c = 512
  while c > 16 and (c * per_query > PREFILL_SCORE_BYTES or p % c):
    c //= 2
  return c if p % c == 0 else p


def prefill_cache(params, tokens_bp, positions_bp, kv_mask_bs, cache, model_cfg, chunk,
                  start: int = 0):
  """Slots [start, start + P) of the cache from left-padded tokens, `chunk` queries
  at a time (traceable; `chunk` from `prefill_chunk` and `start`, static). No
  logits are computed."""
  model = _model(model_cfg)
  b, p = tokens_bp.shape
  no_logits = jnp.zeros((b, 0), jnp.int32)
  if chunk >= p:   # one call; a static index lets attention see slots [0, start + P) only
    return model.apply({"params": params}, tokens_bp, positions_bp, cache=cache,
                       cache_index=start, kv_mask_bs=kv_mask_bs, logit_index_bk=no_logits)[1]
  mask_chunks = kv_mask_bs

  def step(cache, xs):
    i, tok_bc, pos_bc = xs
    _, cache = model.apply({"params": params}, tok_bc, pos_bc, cache=cache,
                           cache_index=start + i * chunk, kv_mask_bs=mask_chunks,
                           logit_index_bk=no_logits)
    return cache, None
  split = lambda x_bp: x_bp.reshape(b, p // chunk, chunk).swapaxes(0, 1)
  cache, _ = jax.lax.scan(step, cache, (jnp.arange(p // chunk, dtype=jnp.int32),
                                        split(tokens_bp), split(positions_bp)))
  return cache


@functools.partial(jax.jit, static_argnames=("model_cfg", "n", "max_new", "queue_len", "chunk",
                                             "shared"))
def prefill(params, tokens_bp, lengths_b, seeds_b2, *, model_cfg: ModelConfig, n: int,
            max_new: int, queue_len: int, chunk: int | None = None,
            shared: int = 0) -> DecodeState:
  """Run left-padded prompts [B, P]; a state for B * n rows (prompt i's
  completion j is row i * n + j) with room for `max_new` tokens each.
  `chunk`: queries per prefill step (None: `prefill_chunk`'s choice).

  `shared` = C > 0: the first C columns are one prefix that every prompt starts
  with (a few-shot preamble), and the rest, each row's suffix, is left-padded
  after them. The prefix then runs once, for one row, and its cache is copied
  to every row; only the suffixes run per row. The layout puts the always-empty
  slot at C instead of 0: slots [0, C) hold the prefix (positions 0..C-1), and
  each row's suffix ends in slot P (positions C onwards), so every row still
  attends over exactly its own prompt.

  Row keys: fold_in(fold_in(PRNGKey(seeds_b2[i, 0]), seeds_b2[i, 1]), j).
  """
  b, p = tokens_bp.shape
  s = p + 1 + max_new
  c = shared
  # The empty slot goes at C (0 without a shared prefix); the prompt's last token is in slot P.
  tokens_bp = jnp.concatenate([tokens_bp[:, :c], jnp.zeros((b, 1), tokens_bp.dtype),
                               tokens_bp[:, c:]], axis=1)
  start_b = p + 1 - lengths_b + c          # each row's first suffix slot
  slot_s = jnp.arange(s, dtype=jnp.int32)
  kv_mask_bs = ((slot_s[None] < c) | (slot_s[None] >= start_b[:, None])) & (slot_s[None] < p)
  positions_bp = jnp.where(slot_s[None, :p] < c, slot_s[None, :p],
                           c + jnp.maximum(slot_s[None, :p] - start_b[:, None], 0))
  params = compute_params(params, model_cfg)

  def pick(length, rows):
    if chunk is not None and length % min(chunk, length) == 0:
      return min(chunk, length)
    return prefill_chunk(rows, length, s, model_cfg)
  if c:   # the prefix once, for one row; its cache copied to every row
    one = prefill_cache(params, tokens_bp[:1, :c], positions_bp[:1, :c], kv_mask_bs[:1],
                        init_cache(model_cfg, 1, s), model_cfg, pick(c, 1))
    cache = jax.tree.map(lambda x: jnp.repeat(x, b, axis=0), one)
  else:
    cache = init_cache(model_cfg, b, s)
  cache = prefill_cache(params, tokens_bp[:, c:p], positions_bp[:, c:], kv_mask_bs, cache,
                        model_cfg, pick(p - c, b), start=c)

  def rep(x):
    return jnp.repeat(x, n, axis=0)
  prompt_keys = jax.vmap(lambda a, c: jax.random.fold_in(jax.random.PRNGKey(a), c))(
      seeds_b2[:, 0], seeds_b2[:, 1])
  keys = jax.vmap(jax.random.fold_in)(rep(prompt_keys), jnp.tile(jnp.arange(n), b))
  rows = b * n
  zeros_i = jnp.zeros((rows,), jnp.int32)
  return DecodeState(
      cache=jax.tree.map(rep, cache), kv_mask_bs=rep(kv_mask_bs), pos_b=rep(lengths_b),
      index=jnp.int32(p), next_b=rep(tokens_bp[:, p]),
      tokens_bm=jnp.zeros((rows, max_new), jnp.int32),
      logprobs_bm=jnp.zeros((rows, max_new), jnp.float32),
      forced_bm=jnp.zeros((rows, max_new), bool), step=jnp.int32(0),
      done_b=jnp.zeros((rows,), bool), reason_b=zeros_i, keys_b=keys,
      queue_bq=jnp.zeros((rows, queue_len), jnp.int32), queue_len_b=zeros_i,
      queue_pos_b=zeros_i, paused=jnp.bool_(False))


@functools.partial(jax.jit, static_argnames=("model_cfg", "filters", "pause", "logprobs"),
                   donate_argnames=("state",))
def decode(params, state: DecodeState, settings: dict, limit, *, model_cfg: ModelConfig,
           filters: Filters, pause: bool, logprobs: bool = True) -> DecodeState:
  """Generate until every row is done, `state.step == limit`, or a pause.
  `logprobs=False` skips the log-softmax over the vocabulary (logprobs_bm stays NaN).

  `settings`: temperature_b, top_k_b, top_p_b, min_p_b (per row), stop_ids_k
  (int32, -1 padded; `eos_id` is -1 for none), pad_id, max_new (the request's
  budget), pause_v (bool [V], tokens that pause the loop; used when `pause`).
  """
  model = _model(model_cfg)
  params = compute_params(params, model_cfg)
  rows = state.done_b.shape[0]

  def cond(st):
    return (st.step < limit) & ~jnp.all(st.done_b) & ~st.paused

  def body(st: DecodeState) -> DecodeState:
    kv_mask_bs = jax.lax.dynamic_update_slice(
        st.kv_mask_bs, jnp.ones((rows, 1), bool), (0, st.index))
    positions_b1 = jnp.clip(st.pos_b - 1, 0, model_cfg.max_seq_len - 1)[:, None]
    logits_b1v, cache = model.apply({"params": params}, st.next_b[:, None], positions_b1,
                                    cache=st.cache, cache_index=st.index, kv_mask_bs=kv_mask_bs)
    logits_bv = logits_b1v[:, 0]
    keys_b = jax.vmap(jax.random.fold_in, in_axes=(0, None))(st.keys_b, st.step)
    tok_b = choose(logits_bv, keys_b, settings["temperature_b"], settings["top_k_b"],
                   settings["top_p_b"], settings["min_p_b"], filters)
    queued_b = st.queue_pos_b < st.queue_len_b
    q_tok_b = jnp.take_along_axis(
        st.queue_bq, jnp.minimum(st.queue_pos_b, st.queue_bq.shape[1] - 1)[:, None], axis=1)[:, 0]
    tok_b = jnp.where(queued_b, q_tok_b, tok_b)
    if logprobs:   # logits[tok] - logsumexp(logits): no [B, V] log-softmax written
      logprob_b = (jnp.take_along_axis(logits_bv, tok_b[:, None], axis=1)[:, 0]
                   - jax.nn.logsumexp(logits_bv, axis=-1))
    else:
      logprob_b = jnp.full((rows,), jnp.nan, jnp.float32)
    live_b = ~st.done_b
    tok_b = jnp.where(live_b, tok_b, settings["pad_id"])
    reason_b = jnp.select(
        [tok_b == settings["eos_id"], jnp.any(tok_b[:, None] == settings["stop_ids_k"][None], -1),
         st.step + 1 >= settings["max_new"], st.pos_b + 1 >= model_cfg.max_seq_len],
        [EOS, STOP_TOKEN, LENGTH, CONTEXT], RUNNING)
    reason_b = jnp.where(live_b, reason_b, st.reason_b)
    done_b = st.done_b | (reason_b != RUNNING)
    paused = jnp.bool_(False)
    if pause:
      paused = jnp.any(live_b & ~done_b & ~queued_b & settings["pause_v"][tok_b])

    def put(buf_bm, col_b):
      return jax.lax.dynamic_update_slice(buf_bm, col_b[:, None].astype(buf_bm.dtype),
                                          (0, st.step))
    return st.replace(
        cache=cache, kv_mask_bs=kv_mask_bs, pos_b=st.pos_b + live_b, index=st.index + 1,
        next_b=tok_b, tokens_bm=put(st.tokens_bm, tok_b),
        logprobs_bm=put(st.logprobs_bm, jnp.where(live_b, logprob_b, 0.0)),
        forced_bm=put(st.forced_bm, live_b & queued_b), step=st.step + 1, done_b=done_b,
        reason_b=reason_b, queue_pos_b=st.queue_pos_b + (live_b & queued_b), paused=paused)

  return jax.lax.while_loop(cond, body, state.replace(paused=jnp.bool_(False)))


ROW_SETTINGS = ("temperature_b", "top_k_b", "top_p_b", "min_p_b")


@jax.jit
def take_rows(state: DecodeState, settings: dict, rows_k) -> tuple[DecodeState, dict]:
  """The state and per-row settings of rows `rows_k` only, in that order: a
  smaller batch for the rows still running (`generate`'s compaction). Every
  per-row array is gathered, the cache included; the shared slot index and step
  stay, and each row keeps its own key, so its draws do not change."""
  take = lambda x: jnp.take(x, rows_k, axis=0)
  state = state.replace(
      cache=jax.tree.map(take, state.cache), kv_mask_bs=take(state.kv_mask_bs),
      pos_b=take(state.pos_b), next_b=take(state.next_b), tokens_bm=take(state.tokens_bm),
      logprobs_bm=take(state.logprobs_bm), forced_bm=take(state.forced_bm),
      done_b=take(state.done_b), reason_b=take(state.reason_b), keys_b=take(state.keys_b),
      queue_bq=take(state.queue_bq), queue_len_b=take(state.queue_len_b),
      queue_pos_b=take(state.queue_pos_b))
  return state, {k: take(v) if k in ROW_SETTINGS else v for k, v in settings.items()}
