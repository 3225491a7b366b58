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


def reference_logprobs(ref_trainable, frozen, batch, *, model_cfg):
  return policy_logprobs(ref_trainable, frozen, batch, model_cfg=model_cfg)[0]


def grpo_step(trainable, opt_state, frozen, batch, adv_n, old_logp_nt, ref_logp_nt,
              eps, beta, rng, *, model_cfg, optimizer, aggregation: str, norm_tokens: int,
              first: bool, dropout: bool, use_ref: bool, shardings=None,
              kl_ratio_weighted: bool = False):
  """One optimizer update; returns (trainable, opt_state, metrics, log p [N, M]).

  `batch["mask"]` marks the model-written completion tokens: the loss, the KL,
  the entropy and the clip fraction count those only (tool tokens are context).
  `first`: old log-probs are the policy's own (stopped), so the ratio is exactly 1
  and `old_logp_nt` is not read. `use_ref` False: no KL term (`ref_logp_nt` unread).
  `shardings`: a `parallel.Static` of (trainable, opt_state) shardings the
  updated trees keep (FSDP), or None to leave them to the compiler."""
  import optax

  mask_nt = batch["mask"]

  def loss_fn(tr):
    logp, entropy = policy_logprobs(tr, frozen, batch, rng if dropout else None,
                                    model_cfg=model_cfg)
    old = jax.lax.stop_gradient(logp) if first else old_logp_nt
    ref = ref_logp_nt if use_ref else jax.lax.stop_gradient(logp)
    loss, m = grpo_loss(logp, old, ref, adv_n, mask_nt, eps=eps, beta=beta,
                        aggregation=aggregation, norm_tokens=norm_tokens,
                        kl_ratio_weighted=kl_ratio_weighted)
    count = jnp.maximum(jnp.sum(mask_nt), 1.0)
    m["entropy"] = jnp.sum(entropy * mask_nt) / count
    if "sampler_logp" in batch:   # how far the learning pass is from the sampler's numbers
      m["sampler_logp_gap"] = jnp.sum(jnp.abs(logp - batch["sampler_logp"]) * mask_nt) / count
    return loss, (m, logp)

  (loss, (m, logp)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
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
    "shardings", "kl_ratio_weighted"))
_reference_jit = jax.jit(reference_logprobs, static_argnames=("model_cfg",))
