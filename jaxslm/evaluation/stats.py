"""Statistics for evaluation results: error bars, pass@k, maj@k, paired tests.

    from jaxslm.evaluation import stats

    stats.mean_stderr([1, 0, 1, 1])          # (0.75, 0.25)
    stats.wilson_ci(0, 10)                   # (0.0, 0.2775...)
    stats.pass_at_k(n=10, c=3, k=5)          # 0.9166...
    stats.maj_at_k(["18", "18.0", "7"], "18", k=3)   # True
    stats.mcnemar_exact(correct_a, correct_b)["p_value"]
    stats.paired_bootstrap(correct_a, correct_b, seed=0)["ci95"]

Only numpy and the standard library are used. `mean_stderr` reports the
standard error as lm-evaluation-harness does (sample standard deviation with
ddof=1 over sqrt(n)), so numbers are comparable with its tables. `pass_at_k` is
the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), written
as a product so it never forms huge binomials. `mcnemar_exact` is computed
with integer arithmetic and is exact for any number of problems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from jaxslm.errors import UserError
from jaxslm.evaluation.extract import answers_match, normalize, to_number

Z95 = 1.959964  # two-sided 95% quantile of the standard normal
_BOOTSTRAP_CHUNK = 1 << 22  # resampled indices held at once (32 MiB of int64)


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
  """Mean and standard error (sample std, ddof=1, over sqrt(n)); n == 1 -> nan."""
  x = _vector(values, "values")
  if x.size == 0:
    raise UserError("mean_stderr got no values; pass at least one score")
  mean = float(x.mean())
  if x.size == 1:
    return mean, math.nan
  return mean, float(x.std(ddof=1) / math.sqrt(x.size))


def normal_ci(mean: float, stderr: float, z: float = Z95) -> tuple[float, float]:
  """The normal-approximation interval mean -/+ z * stderr."""
  return mean - z * stderr, mean + z * stderr


def wilson_ci(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion (sound near 0 and 1)."""
  _check_count(n, "n", minimum=1)
  _check_count(successes, "successes")
  if successes > n:
    raise UserError(f"wilson_ci got successes={successes} > n={n}; successes counts "
                    "the correct problems among the n")
  p = successes / n
  z2 = z * z
  denom = 1 + z2 / n
  center = (p + z2 / (2 * n)) / denom
  half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
  lo = 0.0 if successes == 0 else max(0.0, center - half)   # exact at the edges
  hi = 1.0 if successes == n else min(1.0, center + half)
  return lo, hi


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c,k)/C(n,k).

  C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), which stays in
  floating-point range for any n; it is 0 (pass@k = 1) when n - c < k.
  """
  _check_count(n, "n", minimum=1)
  _check_count(c, "c")
  _check_count(k, "k", minimum=1)
  if k > n:
    raise UserError(f"pass@k needs k <= n, got k={k} with n={n} samples; sample at "
                    "least k completions per problem or lower k")
  if c > n:
    raise UserError(f"pass@k got c={c} correct out of n={n} samples; c cannot exceed n")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(ns: Sequence[int], cs: Sequence[int], k: int) -> float:
  """pass@k averaged over problems (problem i has ns[i] samples, cs[i] correct)."""
  ns, cs = list(ns), list(cs)
  if len(ns) != len(cs):
    raise UserError(f"mean_pass_at_k got {len(ns)} sample counts but {len(cs)} correct "
                    "counts; pass one of each per problem")
  if not ns:
    raise UserError("mean_pass_at_k got no problems; pass at least one")
  return sum(pass_at_k(n, c, k) for n, c in zip(ns, cs)) / len(ns)


def majority_vote(answers: Sequence[str | None]) -> str | None:
  """The most frequent answer, equivalent answers pooled; None if none voted.

  Answers are grouped by exact numeric value when they parse as numbers
  ("18", "18.0", "$18" are one group), else by normalized text; None (no
  answer extracted) does not vote. A tie goes to the group that appeared
  first, and the group's first answer, as written, is returned.
  """
  counts: dict[object, int] = {}
  first: dict[object, str] = {}
  for answer in answers:
    key = _vote_key(answer)
    if key is None:
      continue
    counts[key] = counts.get(key, 0) + 1
    first.setdefault(key, answer)
  if not counts:
    return None
  best = max(counts.values())
  winner = next(key for key in counts if counts[key] == best)  # dicts keep order
  return first[winner]


def maj_at_k(answers: Sequence[str | None], gold: str | None, k: int) -> bool:
  """Whether the majority vote over the first k answers matches `gold`."""
  _check_count(k, "k", minimum=1)
  if k > len(answers):
    raise UserError(f"maj@k needs at least k={k} answers, got {len(answers)}; sample "
                    "more completions per problem or lower k")
  return answers_match(majority_vote(list(answers)[:k]), gold)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
  """Exact McNemar test on paired per-problem correctness of systems a and b.

  Counts the table (`both`, `a_only`, `b_only`, `neither`) and the two-sided
  exact binomial p-value on the m = a_only + b_only discordant problems:
  p = min(1, 2 * sum_{i <= min(a_only, b_only)} C(m, i) / 2^m), 1.0 when m == 0.
  """
  x, y = _paired(a, b, "mcnemar_exact")
  x, y = x.astype(bool), y.astype(bool)
  both, a_only = int(np.sum(x & y)), int(np.sum(x & ~y))
  b_only, neither = int(np.sum(~x & y)), int(np.sum(~x & ~y))
  m = a_only + b_only
  if m == 0:
    p_value = 1.0
  else:
    tail = sum(math.comb(m, i) for i in range(min(a_only, b_only) + 1))
    p_value = float(min(Fraction(1), Fraction(2 * tail, 2**m)))
  return {"n": int(x.size), "both": both, "a_only": a_only, "b_only": b_only,
          "neither": neither, "p_value": p_value}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000,
                     seed: int = 0) -> dict:
  """Paired bootstrap of mean(a) - mean(b) over problems.

  Each resample draws the problem indices with replacement (the same indices
  for a and b, keeping the pairing) and records diff* = mean(a* - b*).
  `ci95` is the 2.5 / 97.5 percentile interval of diff*. `p_value` is two-sided
  for "no difference", by the shifted-bootstrap method: the null distribution
  is diff* - diff (the resampled differences centered on zero), and
  p = (#{|diff* - diff| >= |diff|} + 1) / (n_resamples + 1), so p is never 0.
  Deterministic for a given `seed`.
  """
  x, y = _paired(a, b, "paired_bootstrap")
  if x.size == 0:
    raise UserError("paired_bootstrap got no problems; pass one score per problem")
  _check_count(n_resamples, "n_resamples", minimum=1)
  d = x - y
  n = d.size
  diff = float(d.mean())
  rng = np.random.default_rng(seed)
  rows = max(1, _BOOTSTRAP_CHUNK // n)
  stars = np.empty(n_resamples, dtype=np.float64)
  for start in range(0, n_resamples, rows):
    stop = min(start + rows, n_resamples)
    stars[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
  lo, hi = np.percentile(stars, [2.5, 97.5])
  extreme = int(np.sum(np.abs(stars - diff) >= abs(diff)))
  return {"diff": diff, "ci95": (float(lo), float(hi)),
          "p_value": (extreme + 1) / (n_resamples + 1)}


# ------------------------------------------------------------------ internals
def _vote_key(answer: str | None) -> object:
  number = to_number(answer)
  if number is not None:
    return ("number", number)
  text = normalize(answer)
  return None if text is None else ("text", text)


def _vector(values: Sequence[float], name: str) -> np.ndarray:
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1:
    raise UserError(f"{name} must be a flat sequence of numbers, got shape {x.shape}; "
                    "pass one score per problem")
  return x


def _paired(a: Sequence[float], b: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
  x, y = _vector(a, "a"), _vector(b, "b")
  if x.size != y.size:
    raise UserError(f"{what} needs paired results, got len(a)={x.size} and "
                    f"len(b)={y.size}; score both systems on the same problems")
  return x, y


def _check_count(value: int, name: str, minimum: int = 0) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise UserError(f"{name} must be an int >= {minimum}, got {value!r}")
