"""GRPO's formulas as pure functions: advantages, the clipped surrogate with a
k3 KL penalty, the two loss aggregations, and the ε and β schedules.

    adv_bg = group_advantages(rewards_bg, norm="group")           # [B, G]
    loss, m = grpo_loss(logp_bt, old_logp_bt, ref_logp_bt, adv_n, mask_bt,
                        eps=0.2, beta=0.04, aggregation="sequence")

Shapes: N = B·G completion rows (prompt i's completion j is row i·G + j), T the
target positions of a row; `mask_bt` is 1.0 on the completion's tokens, 0.0 on
prompt and padding. Per token, with r = exp(logp − old_logp):

    pg  = −min(r·A, clip(r, 1 − ε, 1 + ε)·A)
    kl  = exp(ref − logp) − (ref − logp) − 1          (k3: unbiased, ≥ 0)
    ℓ   = pg + β·kl

Aggregation ("sequence", GRPO): the mean of ℓ over each row's tokens, then the
mean over rows. ("token_sum", Dr.GRPO): the sum of ℓ over every token divided
by a constant, N · `norm_tokens` (the generation budget by default), so a
token's weight does not depend on its completion's length. ("token_mean",
DAPO): the sum of ℓ over every token of the batch divided by their number.

`kl_ratio_weighted`: the KL term of each token is r·kl instead of kl. The
tokens were drawn from the old policy, so the k3 estimate of KL(π ‖ π_ref)
under the current policy needs the importance weight r (with the gradient
through r as well); at the first pass r = 1 and only the gradient differs.

`mask_bt` marks the tokens the model wrote: a tool's output (a calculator
value, an agent's observation) stays in the context but is 0 here, so it
takes no part in the loss, the KL, the clip fraction or the token counts.

Advantages: A = (R − mean of the group) / (std + 1e-8) with std the group's
("group"), the whole batch's ("batch"), or no division at all ("none",
Dr.GRPO). std is the sample standard deviation (ddof = 1), as TRL computes it.
A group whose rewards are all equal gets A = 0: no policy gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxslm.errors import UserError

NORMALIZATIONS = ("group", "batch", "none")
AGGREGATIONS = ("sequence", "token_sum", "token_mean")
ADV_EPS = 1e-8


def check_choice(name: str, value: str, valid: tuple[str, ...]) -> str:
  if value not in valid:
    raise UserError(f"{name}={value!r}; valid values: {', '.join(valid)}.")
  return value


def group_advantages(rewards_bg, norm: str = "group"):
  """Group-relative advantages [B, G] of rewards [B, G] (numpy or jax)."""
  check_choice("grpo.adv_norm", norm, NORMALIZATIONS)
  xp = jnp if isinstance(rewards_bg, jax.Array) else __import__("numpy")
  r = xp.asarray(rewards_bg, dtype=xp.float32 if xp is jnp else xp.float64)
  if r.ndim != 2 or r.shape[1] < 2:
    raise UserError(f"rewards have shape {tuple(r.shape)}; expected [prompts, G] with G >= 2 "
                    "(advantages are undefined for a group of one): raise grpo.G.")
  centered = r - r.mean(axis=1, keepdims=True)
  if norm == "none":
    return centered
  if norm == "group":
    std = r.std(axis=1, ddof=1, keepdims=True)
  else:
    std = r.reshape(-1).std(ddof=1) if r.size > 1 else 0.0
  return centered / (std + ADV_EPS)


def token_logprobs(logits_btv, targets_bt):
  """(log p(target), entropy) per position, float32, from raw logits (temperature 1)."""
  logp_btv = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
  logp_bt = jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1)[..., 0]
  entropy_bt = -jnp.sum(jnp.exp(logp_btv) * logp_btv, axis=-1)
  return logp_bt, entropy_bt


def grpo_loss(logp_bt, old_logp_bt, ref_logp_bt, adv_n, mask_bt, *, eps, beta,
              aggregation: str = "sequence", norm_tokens: int = 0,
              kl_ratio_weighted: bool = False, rows_total=None, tokens_total=None):
  """(loss, metrics) of one batch; see the module doc. `eps`, `beta` may be traced.

  `rows_total`, `tokens_total`: the row and model-token counts of the whole
  batch when these rows are one micro-batch of it (default: these rows'). With
  them the loss and the metrics of the micro-batches sum to the whole batch's."""
  check_choice("grpo.aggregation", aggregation, AGGREGATIONS)
  mask = mask_bt.astype(jnp.float32)
  adv = adv_n.astype(jnp.float32)[:, None]
  ratio = jnp.exp(logp_bt - old_logp_bt)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * adv
  pg_bt = -jnp.minimum(unclipped, clipped)
  d = ref_logp_bt - logp_bt
  kl_bt = jnp.exp(d) - d - 1.0
  per_token = pg_bt + beta * (ratio * kl_bt if kl_ratio_weighted else kl_bt)
  tokens_n = jnp.sum(mask, axis=1)
  n_tokens = jnp.maximum(jnp.sum(tokens_n) if tokens_total is None else tokens_total, 1.0)
  n_rows = mask.shape[0] if rows_total is None else rows_total
  if aggregation == "sequence":
    rows = jnp.sum(per_token * mask, axis=1) / jnp.maximum(tokens_n, 1.0)
    loss = jnp.sum(rows) / n_rows
  elif aggregation == "token_mean":
    loss = jnp.sum(per_token * mask) / n_tokens
  else:
    const = n_rows * (norm_tokens if norm_tokens > 0 else mask.shape[1])
    loss = jnp.sum(per_token * mask) / const
  is_clipped = ((ratio < 1.0 - eps) & (adv < 0)) | ((ratio > 1.0 + eps) & (adv > 0))
  metrics = {
      "pg_loss": jnp.sum(pg_bt * mask) / n_tokens,
      "kl": jnp.sum(kl_bt * mask) / n_tokens,
      "clip_frac": jnp.sum(is_clipped * mask) / n_tokens,
      "ratio_mean": jnp.sum(ratio * mask) / n_tokens,
  }
  return loss, metrics


# ------------------------------------------------------------------ schedules
def clip_epsilon(step: int, eps0: float = 0.2, eps_min: float = 0.1, tau: float = 0.0) -> float:
  """ε(t) = ε0·exp(−t/τ) + ε_min (the adaptive clip); τ <= 0: the constant ε0."""
  if tau <= 0:
    return float(eps0)
  return float(eps0 * math.exp(-step / tau) + eps_min)


def adapt_beta(beta: float, kl: float, target: float, factor: float = 1.5,
               lo: float = 1e-6, hi: float = 10.0) -> float:
  """β after a step that measured `kl`: ×factor above 2·target, ÷factor below
  target/2, else unchanged; kept in [lo, hi]. target <= 0: β is constant."""
  if target <= 0 or not math.isfinite(kl):
    return float(beta)
  if kl > 2.0 * target:
    beta *= factor
  elif kl < 0.5 * target:
    beta /= factor
  return float(min(max(beta, lo), hi))
