"""GRPO's formulas against plain-Python/numpy loops, the first-pass ratio, the
zero-signal group, and the ε / β schedules."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.errors import UserError
from jaxslm.train.grpo_loss import (adapt_beta, clip_epsilon, group_advantages, grpo_loss,
                                    token_logprobs)


# ------------------------------------------------------------------ the reference
def ref_advantages(rewards, norm):
  out = []
  flat = [x for row in rewards for x in row]
  mean_all = sum(flat) / len(flat)
  std_all = math.sqrt(sum((x - mean_all) ** 2 for x in flat) / (len(flat) - 1))
  for row in rewards:
    m = sum(row) / len(row)
    s = math.sqrt(sum((x - m) ** 2 for x in row) / (len(row) - 1))
    denom = {"group": s + 1e-8, "batch": std_all + 1e-8, "none": 1.0}[norm]
    out.append([(x - m) / denom for x in row])
  return out


def ref_loss(logp, old, ref, adv, mask, eps, beta, aggregation, norm_tokens,
             kl_ratio_weighted=False):
  per_row, total, count = [], 0.0, 0
  for i in range(len(logp)):
    row_sum, row_n = 0.0, 0
    for t in range(len(logp[i])):
      if not mask[i][t]:
        continue
      r = math.exp(logp[i][t] - old[i][t])
      lo, hi = 1 - eps, 1 + eps
      pg = -min(r * adv[i], min(max(r, lo), hi) * adv[i])
      kl = math.exp(ref[i][t] - logp[i][t]) - (ref[i][t] - logp[i][t]) - 1
      row_sum += pg + beta * (r * kl if kl_ratio_weighted else kl)
      row_n += 1
    per_row.append(row_sum / max(row_n, 1))
    total += row_sum
    count += row_n
  if aggregation == "sequence":
    return sum(per_row) / len(per_row)
  if aggregation == "token_mean":
    return total / max(count, 1)
  return total / (len(logp) * norm_tokens)


jitted_loss = jax.jit(lambda *a, aggregation, norm_tokens, kl_ratio_weighted=False: grpo_loss(
    *a[:5], eps=a[5], beta=a[6], aggregation=aggregation, norm_tokens=norm_tokens,
    kl_ratio_weighted=kl_ratio_weighted),
    static_argnames=("aggregation", "norm_tokens", "kl_ratio_weighted"))


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  n, t = 6, 7
  logp = -rng.uniform(0.1, 3.0, (n, t))
  old = logp + rng.normal(0, 0.4, (n, t))          # ratios well outside [0.8, 1.2] too
  ref = logp + rng.normal(0, 0.3, (n, t))
  mask = (rng.uniform(size=(n, t)) < 0.75).astype(np.float32)
  mask[0, :] = 0.0                                   # a row with no tokens
  adv = np.array([1.3, -0.7, 0.0, 2.0, -1.5, 0.4])
  return logp, old, ref, adv, mask


@pytest.mark.parametrize("aggregation", ["sequence", "token_sum", "token_mean"])
@pytest.mark.parametrize("eps,beta,kl_ratio_weighted", [(0.2, 0.04, False), (0.05, 0.0, False),
                                                        (0.3, 0.5, False), (0.2, 0.3, True)])
def test_loss_matches_the_reference(batch, aggregation, eps, beta, kl_ratio_weighted):
  logp, old, ref, adv, mask = batch
  loss, m = jitted_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(old, jnp.float32),
                        jnp.asarray(ref, jnp.float32), jnp.asarray(adv), jnp.asarray(mask),
                        eps, beta, aggregation=aggregation, norm_tokens=10,
                        kl_ratio_weighted=kl_ratio_weighted)
  want = ref_loss(logp, old, ref, adv, mask, eps, beta, aggregation, 10, kl_ratio_weighted)
  assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
  # both clip branches occur in this batch
  ratio = np.exp(logp - old)
  a = adv[:, None]
  upper = (ratio > 1 + eps) & (a > 0) & (mask > 0)
  lower = (ratio < 1 - eps) & (a < 0) & (mask > 0)
  assert upper.any() and lower.any()
  assert float(m["clip_frac"]) == pytest.approx((upper | lower).sum() / mask.sum(), abs=1e-6)
  kl = np.exp(ref - logp) - (ref - logp) - 1
  assert float(m["kl"]) == pytest.approx((kl * mask).sum() / mask.sum(), rel=1e-5)


def test_token_mean_is_one_mean_over_every_token_of_the_batch(batch):
  """DAPO's aggregation: every model-written token weighs the same whatever its
  row's length, unlike "sequence"; here checked against numpy on the ℓ values."""
  logp, old, ref, adv, mask = batch
  args = [jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv, mask)]
  loss, _ = grpo_loss(*args, eps=0.2, beta=0.1, aggregation="token_mean")
  r = np.exp(logp - old)
  a = adv[:, None]
  pg = -np.minimum(r * a, np.clip(r, 0.8, 1.2) * a)
  d = ref - logp
  per_token = pg + 0.1 * (np.exp(d) - d - 1)
  assert float(loss) == pytest.approx((per_token * mask).sum() / mask.sum(), rel=1e-5)
  seq, _ = grpo_loss(*args, eps=0.2, beta=0.1, aggregation="sequence")
  assert float(seq) != pytest.approx(float(loss), rel=1e-3)   # the rows differ in length


def test_ratio_weighted_kl_gradient_matches_numpy():
  """With A = 0 only the KL term is left: per token, d(β·r·k3)/d logp =
  β·r·(k3 + 1 − e^d) (r = exp(logp − old), d = ref − logp, k3 = e^d − d − 1),
  against β·(1 − e^d) unweighted; token_mean divides both by the token count."""
  rng = np.random.default_rng(3)
  logp = -rng.uniform(0.1, 2.0, (3, 4))
  old = logp + rng.normal(0, 0.3, (3, 4))
  ref = logp + rng.normal(0, 0.3, (3, 4))
  mask = np.ones((3, 4), np.float32)
  mask[2, 3] = 0.0
  adv = np.zeros(3)

  def loss(lp, weighted):
    return grpo_loss(lp, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                     jnp.asarray(adv, jnp.float32), jnp.asarray(mask), eps=0.2, beta=0.5,
                     aggregation="token_mean", kl_ratio_weighted=weighted)[0]
  lp = jnp.asarray(logp, jnp.float32)
  r, d = np.exp(logp - old), ref - logp
  k3 = np.exp(d) - d - 1
  # d k3 / d logp = -e^d + 1;  d (r k3) / d logp = r k3 + r (1 - e^d)
  want_w = 0.5 * (r * k3 + r * (1 - np.exp(d))) * mask / mask.sum()
  want_p = 0.5 * (1 - np.exp(d)) * mask / mask.sum()
  np.testing.assert_allclose(np.asarray(jax.grad(loss)(lp, True)), want_w, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(jax.grad(loss)(lp, False)), want_p, rtol=1e-4, atol=1e-7)


def test_token_sum_default_constant_is_the_row_length(batch):
  logp, old, ref, adv, mask = batch
  args = [jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv, mask)]
  loss, _ = grpo_loss(*args, eps=0.2, beta=0.1, aggregation="token_sum")
  want = ref_loss(logp, old, ref, adv, mask, 0.2, 0.1, "token_sum", logp.shape[1])
  assert float(loss) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_advantages_match_the_reference(norm):
  rewards = [[3.0, 1.0, 0.5, -1.0], [0.2, 0.2, 0.2, 0.2], [1.0, 2.0, 2.0, 5.0]]
  got = group_advantages(np.array(rewards), norm)
  assert np.allclose(got, ref_advantages(rewards, norm), rtol=1e-12, atol=1e-12)
  assert np.all(got[1] == 0.0)         # all-equal group: no signal
  got_jax = group_advantages(jnp.asarray(rewards), norm)
  assert np.allclose(np.asarray(got_jax), got, rtol=1e-5, atol=1e-6)


def test_advantages_need_a_group_of_two():
  with pytest.raises(UserError, match="G >= 2"):
    group_advantages(np.ones((3, 1)))
  with pytest.raises(UserError, match="adv_norm='sd'"):
    group_advantages(np.ones((3, 2)), "sd")


def test_first_pass_ratio_is_one_and_clipping_does_not_matter():
  """With old = stop_gradient(logp) the ratio is exactly 1: the loss and its
  gradient are the same for any ε (clipped and unclipped agree)."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 5, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (4, 5)))
  adv = jnp.asarray([1.0, -1.0, 0.5, -0.2])
  mask = jnp.ones((4, 5))

  def loss(lg, eps):
    logp, _ = token_logprobs(lg, targets)
    out, m = grpo_loss(logp, jax.lax.stop_gradient(logp), logp, adv, mask, eps=eps, beta=0.1)
    return out, m
  (l1, m1), g1 = jax.value_and_grad(loss, has_aux=True)(logits, 0.2)
  (l2, m2), g2 = jax.value_and_grad(loss, has_aux=True)(logits, 1e-6)
  (l3, _), g3 = jax.value_and_grad(loss, has_aux=True)(logits, 1e6)
  assert float(m1["ratio_mean"]) == 1.0 and float(m1["clip_frac"]) == 0.0
  assert float(l1) == float(l2) == float(l3)
  assert np.array_equal(np.asarray(g1), np.asarray(g2)) and np.array_equal(np.asarray(g1),
                                                                            np.asarray(g3))
  # and the unclipped surrogate -A * r has the same gradient: -A * d logp
  def plain(lg):
    logp, _ = token_logprobs(lg, targets)
    return jnp.mean(jnp.mean(-adv[:, None] * jnp.exp(logp - jax.lax.stop_gradient(logp)), 1))
  assert np.allclose(np.asarray(jax.grad(plain)(logits)), np.asarray(g1), atol=1e-7)


def test_a_group_of_equal_rewards_gives_no_policy_gradient():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(4, 6, 9)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 9, (4, 6)))
  adv = jnp.asarray(group_advantages(np.full((1, 4), 2.5)).reshape(-1))
  assert np.all(np.asarray(adv) == 0.0)

  def loss(lg):
    logp, _ = token_logprobs(lg, targets)
    old = jax.lax.stop_gradient(logp) + 0.3           # any old policy
    return grpo_loss(logp, old, logp, adv, jnp.ones((4, 6)), eps=0.2, beta=0.0)[0]
  grads = np.asarray(jax.grad(loss)(logits))
  assert np.all(grads == 0.0)


def test_token_logprobs_and_entropy():
  logits = jnp.asarray([[[0.0, math.log(3.0)]]])
  logp, ent = token_logprobs(logits, jnp.asarray([[1]]))
  assert float(logp[0, 0]) == pytest.approx(math.log(0.75))
  assert float(ent[0, 0]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


# ------------------------------------------------------------------ schedules
def test_clip_schedule():
  assert clip_epsilon(0, 0.2, 0.1, 100.0) == pytest.approx(0.3)
  assert clip_epsilon(100, 0.2, 0.1, 100.0) == pytest.approx(0.2 * math.exp(-1) + 0.1)
  assert clip_epsilon(10_000, 0.2, 0.1, 100.0) == pytest.approx(0.1, abs=1e-12)
  eps = [clip_epsilon(t, 0.2, 0.1, 50.0) for t in range(0, 300, 10)]
  assert all(a > b for a, b in zip(eps, eps[1:]))      # decays monotonically to eps_min
  assert clip_epsilon(123, 0.2, 0.1, 0.0) == 0.2          # tau 0: constant


def test_beta_schedule():
  target = 0.02
  assert adapt_beta(0.04, 0.041, target) == pytest.approx(0.06)       # > 2 * target: x1.5
  assert adapt_beta(0.04, 0.0099, target) == pytest.approx(0.04 / 1.5)  # < target / 2: / 1.5
  assert adapt_beta(0.04, 0.04, target) == 0.04                        # boundaries: unchanged
  assert adapt_beta(0.04, 0.01, target) == 0.04
  assert adapt_beta(0.04, 0.03, target) == 0.04
  assert adapt_beta(0.04, 1.0, 0.0) == 0.04                            # no target: constant
  assert adapt_beta(0.04, float("nan"), target) == 0.04
  beta = 0.04
  for _ in range(200):
    beta = adapt_beta(beta, 10.0, target)
  assert beta == 10.0                                                  # bounded
