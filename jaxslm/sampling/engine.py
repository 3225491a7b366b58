"""The jitted core of the sampler: prefill, then decode with a KV cache.

Layout. Prompts are left-padded to a common bucket length P, so every row's
last prompt token sits in slot P - 1 and all rows decode in lockstep, writing
slot P + step. Each row keeps its own positions (0 at its first real token)
and `kv_mask_bs` hides its padding, so a row computes what it would compute
alone. The cache holds S = P + M slots (M the bucketed token budget).

`prefill` runs the prompts once (logits for the last position only),
replicates the cache for n completions per prompt, and returns a
`DecodeState`. `decode` runs the token loop inside `lax.while_loop` until
every row is done, `limit` tokens exist, or a row wrote a "pause" token the
host must look at (the calculator hook); the state is donated, so the cache is
updated in place call after call.

A decode step: pick each row's token (a queued forced token if the host put
one there, else `filters.choose`), record it with its log-probability under
the model (log-softmax of the raw logits, temperature 1), decide whether the
row is done, and run the model on it to get the next logits.
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
  pos_b: jax.Array       # int32: position of the next token fed (= tokens so far)
  index: jax.Array       # int32 []: slot of the next token fed
  logits_bv: jax.Array   # float32: logits of the next token
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


@functools.partial(jax.jit, static_argnames=("model_cfg", "n", "max_new", "queue_len"))
def prefill(params, tokens_bp, lengths_b, seeds_b2, *, model_cfg: ModelConfig, n: int,
            max_new: int, queue_len: int) -> DecodeState:
  """Run left-padded prompts [B, P]; a state for B * n rows (prompt i's
  completion j is row i * n + j) with room for `max_new` tokens each.

  Row keys: fold_in(fold_in(PRNGKey(seeds_b2[i, 0]), seeds_b2[i, 1]), j).
  """
  b, p = tokens_bp.shape
  s = p + max_new
  pad_b = p - lengths_b
  slot_s = jnp.arange(s, dtype=jnp.int32)
  kv_mask_bs = (slot_s[None] >= pad_b[:, None]) & (slot_s[None] < p)
  positions_bp = jnp.maximum(slot_s[None, :p] - pad_b[:, None], 0)
  logits_b1v, cache = _model(model_cfg).apply(
      {"params": params}, tokens_bp, positions_bp, cache=init_cache(model_cfg, b, s),
      cache_index=0, kv_mask_bs=kv_mask_bs, last_only=True)

  def rep(x):
    return jnp.repeat(x, n, axis=0)
  prompt_keys = jax.vmap(lambda a, c: jax.random.fold_in(jax.random.PRNGKey(a), c))(
      seeds_b2[:, 0], seeds_b2[:, 1])
  keys = jax.vmap(jax.random.fold_in)(rep(prompt_keys), jnp.tile(jnp.arange(n), b))
  rows = b * n
  zeros_i = jnp.zeros((rows,), jnp.int32)
  return DecodeState(
      cache=jax.tree.map(rep, cache), kv_mask_bs=rep(kv_mask_bs), pos_b=rep(lengths_b),
      index=jnp.int32(p), logits_bv=rep(logits_b1v[:, 0]),
      tokens_bm=jnp.zeros((rows, max_new), jnp.int32),
      logprobs_bm=jnp.zeros((rows, max_new), jnp.float32),
      forced_bm=jnp.zeros((rows, max_new), bool), step=jnp.int32(0),
      done_b=jnp.zeros((rows,), bool), reason_b=zeros_i, keys_b=keys,
      queue_bq=jnp.zeros((rows, queue_len), jnp.int32), queue_len_b=zeros_i,
      queue_pos_b=zeros_i, paused=jnp.bool_(False))


@functools.partial(jax.jit, static_argnames=("model_cfg", "filters", "pause"),
                   donate_argnames=("state",))
def decode(params, state: DecodeState, settings: dict, limit, *, model_cfg: ModelConfig,
           filters: Filters, pause: bool) -> DecodeState:
  """Generate until every row is done, `state.step == limit`, or a pause.

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
    keys_b = jax.vmap(jax.random.fold_in, in_axes=(0, None))(st.keys_b, st.step)
    tok_b = choose(st.logits_bv, keys_b, settings["temperature_b"], settings["top_k_b"],
                   settings["top_p_b"], settings["min_p_b"], filters)
    queued_b = st.queue_pos_b < st.queue_len_b
    q_tok_b = jnp.take_along_axis(
        st.queue_bq, jnp.minimum(st.queue_pos_b, st.queue_bq.shape[1] - 1)[:, None], axis=1)[:, 0]
    tok_b = jnp.where(queued_b, q_tok_b, tok_b)
    logprob_b = jnp.take_along_axis(jax.nn.log_softmax(st.logits_bv, axis=-1),
                                    tok_b[:, None], axis=1)[:, 0]
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
    kv_mask_bs = jax.lax.dynamic_update_slice(
        st.kv_mask_bs, jnp.ones((rows, 1), bool), (0, st.index))
    positions_b1 = jnp.minimum(st.pos_b, model_cfg.max_seq_len - 1)[:, None]

    def forward(cache):
      logits_b1v, cache = model.apply({"params": params}, tok_b[:, None], positions_b1,
                                      cache=cache, cache_index=st.index, kv_mask_bs=kv_mask_bs)
      return logits_b1v[:, 0], cache

    # Runs even on a call's last step, whose logits nobody reads: skipping it
    # with lax.cond made a decode step 41% longer (28.7 vs 20.3 ms, slm26m, B=16, CPU),
    # most likely because the conditional copies the cache.
    logits_bv, cache = forward(st.cache)
    return st.replace(
        cache=cache, kv_mask_bs=kv_mask_bs, pos_b=st.pos_b + live_b, index=st.index + 1,
        logits_bv=logits_bv, tokens_bm=put(st.tokens_bm, tok_b),
        logprobs_bm=put(st.logprobs_bm, jnp.where(live_b, logprob_b, 0.0)),
        forced_bm=put(st.forced_bm, live_b & queued_b), step=st.step + 1, done_b=done_b,
        reason_b=reason_b, queue_pos_b=st.queue_pos_b + (live_b & queued_b), paused=paused)

  return jax.lax.while_loop(cond, body, state.replace(paused=jnp.bool_(False)))
