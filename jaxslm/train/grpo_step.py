"""GRPO's jitted functions: completion log-probabilities under base + trainable
(logits at the completion positions only), the reference's, and one optimizer
update of the clipped surrogate + k3 KL (`jaxslm.train.grpo_loss`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslm.models import Decoder
from jaxslm.train.grpo_loss import grpo_loss, token_logprobs


def policy_logprobs(trainable, frozen, tokens_nt, index_nm, rng=None, *, model_cfg):
  """(log p, entropy) [N, M] of the completion tokens tokens[n, index[n, m] + 1]
  under base + trainable; logits are computed at those positions only."""
  from jaxslm import lora
  params = lora.combine(trainable, frozen)
  rngs = {"lora_dropout": rng} if rng is not None else {}
  logits_nmv = Decoder(model_cfg).apply({"params": params}, tokens_nt[:, :-1], rngs=rngs,
                                        logit_index_bk=index_nm)
  return token_logprobs(logits_nmv, jnp.take_along_axis(tokens_nt, index_nm + 1, axis=1))


def reference_logprobs(ref_trainable, frozen, tokens_nt, index_nm, *, model_cfg):
  return policy_logprobs(ref_trainable, frozen, tokens_nt, index_nm, model_cfg=model_cfg)[0]


def grpo_step(trainable, opt_state, frozen, tokens_nt, index_nm, mask_nt, adv_n, old_logp_nt,
              ref_logp_nt,
              eps, beta, rng, *, model_cfg, optimizer, aggregation: str, norm_tokens: int,
              first: bool, dropout: bool, use_ref: bool, shardings=None):
  """One optimizer update; returns (trainable, opt_state, metrics, log p [N, M]).

  `first`: old log-probs are the policy's own (stopped), so the ratio is exactly 1
  and `old_logp_nt` is not read. `use_ref` False: no KL term (`ref_logp_nt` unread).
  `shardings`: a `parallel.Static` of (trainable, opt_state) shardings the
  updated trees keep (FSDP), or None to leave them to the compiler."""
  import optax

  def loss_fn(tr):
    logp, entropy = policy_logprobs(tr, frozen, tokens_nt, index_nm, rng if dropout else None,
                                    model_cfg=model_cfg)
    old = jax.lax.stop_gradient(logp) if first else old_logp_nt
    ref = ref_logp_nt if use_ref else jax.lax.stop_gradient(logp)
    loss, m = grpo_loss(logp, old, ref, adv_n, mask_nt, eps=eps, beta=beta,
                        aggregation=aggregation, norm_tokens=norm_tokens)
    m["entropy"] = jnp.sum(entropy * mask_nt) / jnp.maximum(jnp.sum(mask_nt), 1.0)
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
    "shardings"))
_reference_jit = jax.jit(reference_logprobs, static_argnames=("model_cfg",))
