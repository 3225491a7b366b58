"""GRPO's jitted functions: completion log-probabilities under base + trainable
(each prompt run once for its whole group, logits at the completion positions
only), the reference's, and one optimizer update of the clipped surrogate + k3
KL (`jaxslm.train.grpo_loss`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslm.models import Decoder, init_cache
from jaxslm.train.grpo_loss import grpo_loss, token_logprobs


def policy_logprobs(trainable, frozen, batch, rng=None, *, model_cfg):
  """(log p, entropy) [N, M] of each completion token (`batch["targets"]`)
  under base + trainable, for a `grpo_data.rollout_batch` layout.

  Shared prefix: the P prompts run once (batch P) into a KV cache, which is
  repeated to the N = P x G rows of their groups; the rows then run only their
  completions against it. Gradients flow back through the repeat (summed over
  each group), so the result equals one forward per row over prompt +
  completion (`tests/test_grpo.py` checks values and gradients), at
  P x prompt + N x completion tokens instead of N x (prompt + completion)."""
  from jaxslm import lora
  variables = {"params": lora.combine(trainable, frozen)}
  model = Decoder(model_cfg)
  prefix_pl, prefix_mask_pl = batch["prefix"], batch["prefix_mask"]
  suffix_nm = batch["suffix"]
  (p, lp), (n, m) = prefix_pl.shape, suffix_nm.shape
  group = n // p
  last = model_cfg.max_seq_len - 1   # padding slots may run past the model's positions
  rngs = ({"lora_dropout": jax.random.fold_in(rng, 0)} if rng is not None else {},
          {"lora_dropout": jax.random.fold_in(rng, 1)} if rng is not None else {})
  kv_mask_ps = jnp.concatenate([prefix_mask_pl, jnp.ones((p, m), bool)], axis=1)
  positions_pl = jnp.clip(jnp.cumsum(prefix_mask_pl, axis=1) - 1, 0, last).astype(jnp.int32)
  _, cache = model.apply(variables, prefix_pl, positions_pl, cache=init_cache(model_cfg, p, lp + m),
                         cache_index=0, kv_mask_bs=kv_mask_ps, last_only=True, rngs=rngs[0])
  cache = jax.tree.map(lambda a: jnp.repeat(a, group, axis=0), cache)
  logits_nmv, _ = model.apply(variables, suffix_nm, jnp.minimum(batch["positions"], last),
                              cache=cache, cache_index=lp,
                              kv_mask_bs=jnp.repeat(kv_mask_ps, group, axis=0), rngs=rngs[1])
  return token_logprobs(logits_nmv, batch["targets"])


def _chunk_prompts(x, a: int):
  """[P, ...] -> [a, P/a, ...]: chunk k holds prompts k, k + a, k + 2a, ... (strided, so
  that a device holding a multiple of `a` consecutive prompts feeds every chunk locally)."""
  return jnp.swapaxes(x.reshape(x.shape[0] // a, a, *x.shape[1:]), 0, 1)


def _chunk_rows(x, a: int, group: int):
  """[N = P·G, ...] -> [a, N/a, ...]: the rows of `_chunk_prompts`'s prompts, groups whole."""
  n = x.shape[0]
  y = x.reshape(n // group // a, a, group, *x.shape[1:])
  return jnp.swapaxes(y, 0, 1).reshape(a, n // a, *x.shape[1:])


def _join_rows(x, group: int):
  """The inverse of `_chunk_rows`: [a, N/a, ...] -> [N, ...]."""
  a, m = x.shape[:2]
  y = x.reshape(a, m // group, group, *x.shape[2:])
  return jnp.swapaxes(y, 0, 1).reshape(a * m, *x.shape[2:])


def chunk_batch(batch, a: int):
  """A `grpo_data.rollout_batch` split into `a` micro-batches along a leading axis."""
  group = batch["suffix"].shape[0] // batch["prefix"].shape[0]
  return {k: _chunk_prompts(v, a) if k.startswith("prefix") else _chunk_rows(v, a, group)
          for k, v in batch.items()}


def reference_logprobs(ref_trainable, frozen, batch, *, model_cfg, grad_accum: int = 1):
  """log p [N, M] under the reference; `grad_accum` > 1 runs the rows in that many
  micro-batches (the same numbers, a fraction of the logits' memory)."""
  if grad_accum == 1:
    return policy_logprobs(ref_trainable, frozen, batch, model_cfg=model_cfg)[0]
  group = batch["suffix"].shape[0] // batch["prefix"].shape[0]
  out = jax.lax.map(lambda b: policy_logprobs(ref_trainable, frozen, b, model_cfg=model_cfg)[0],
                    chunk_batch(batch, grad_accum))
  return _join_rows(out, group)


def grpo_step(trainable, opt_state, frozen, batch, adv_n, old_logp_nt, ref_logp_nt,
              eps, beta, rng, *, model_cfg, optimizer, aggregation: str, norm_tokens: int,
              first: bool, dropout: bool, use_ref: bool, shardings=None,
              kl_ratio_weighted: bool = False, grad_accum: int = 1):
  """One optimizer update; returns (trainable, opt_state, metrics, log p [N, M]).

  `batch["mask"]` marks the model-written completion tokens: the loss, the KL,
  the entropy and the clip fraction count those only (tool tokens are context).
  `first`: old log-probs are the policy's own (stopped), so the ratio is exactly 1
  and `old_logp_nt` is not read. `use_ref` False: no KL term (`ref_logp_nt` unread).
  `shardings`: a `parallel.Static` of (trainable, opt_state) shardings the
  updated trees keep (FSDP), or None to leave them to the compiler.
  `grad_accum` > 1: the prompts (with their groups) run in that many
  micro-batches whose gradients are summed before the one update; every
  micro-batch normalizes by the whole batch's rows and tokens, so loss, metrics
  and gradients equal one pass over the batch (with dropout, each micro-batch
  draws its own masks)."""
  import optax

  mask_nt = batch["mask"]
  count = jnp.maximum(jnp.sum(mask_nt), 1.0)
  n_rows = mask_nt.shape[0]

  def loss_fn(tr, b, adv, old_in, ref_in, r):
    logp, entropy = policy_logprobs(tr, frozen, b, r, model_cfg=model_cfg)
    old = jax.lax.stop_gradient(logp) if first else old_in
    ref = ref_in if use_ref else jax.lax.stop_gradient(logp)
    mask = b["mask"]
    loss, m = grpo_loss(logp, old, ref, adv, mask, eps=eps, beta=beta,
                        aggregation=aggregation, norm_tokens=norm_tokens,
                        kl_ratio_weighted=kl_ratio_weighted, rows_total=n_rows,
                        tokens_total=count)
    m["entropy"] = jnp.sum(entropy * mask) / count
    if "sampler_logp" in b:   # how far the learning pass is from the sampler's numbers
      m["sampler_logp_gap"] = jnp.sum(jnp.abs(logp - b["sampler_logp"]) * mask) / count
    return loss, (m, logp)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum == 1:
    (loss, (m, logp)), grads = grad_fn(trainable, batch, adv_n, old_logp_nt, ref_logp_nt,
                                       rng if dropout else None)
  else:
    group = n_rows // batch["prefix"].shape[0]
    xs = (chunk_batch(batch, grad_accum), _chunk_rows(adv_n, grad_accum, group),
          _chunk_rows(old_logp_nt, grad_accum, group), _chunk_rows(ref_logp_nt, grad_accum, group),
          jnp.arange(grad_accum))

    def one(x):
      b, adv, old, ref, k = x
      (loss, (m, logp)), g = grad_fn(trainable, b, adv, old, ref,
                                     jax.random.fold_in(rng, k) if dropout else None)
      return (g, loss, m), logp

    def micro(acc, x):
      out, logp = one(x)
      return jax.tree.map(jnp.add, acc, out), logp

    shapes = jax.eval_shape(one, jax.tree.map(lambda v: v[0], xs))[0]
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    (grads, loss, m), logp_a = jax.lax.scan(micro, zeros, xs)
    logp = _join_rows(logp_a, group)
  updates, opt_state = optimizer.update(grads, opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  if shardings is not None:
    trainable, opt_state = jax.lax.with_sharding_constraint((trainable, opt_state),
                                                            shardings.tree)
  m.update(loss=loss, grad_norm=optax.tree.norm(grads))
  return trainable, opt_state, m, jax.lax.stop_gradient(logp)


# Jitted once per process: the static arguments (model config, optimizer, flags)
# are hashable and the optimizer is memoized by its settings, so a second run
# with the same settings (a resume, a sweep in a notebook) compiles nothing.
_step_jit = jax.jit(grpo_step, donate_argnums=(0, 1), static_argnames=(
    "model_cfg", "optimizer", "aggregation", "norm_tokens", "first", "dropout", "use_ref",
    "shardings", "kl_ratio_weighted", "grad_accum"))
_reference_jit = jax.jit(reference_logprobs, static_argnames=("model_cfg", "grad_accum"))
