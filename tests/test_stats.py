from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from jaxslm.errors import UserError
from jaxslm.evaluation.stats import (Z95, maj_at_k, majority_vote, mcnemar_exact,
                                     mean_pass_at_k, mean_stderr, normal_ci,
                                     paired_bootstrap, pass_at_k, wilson_ci)


def test_mean_stderr_by_hand():
  # mean 0.75; deviations .25,-.75,.25,.25 -> squares sum .75; /3 = .25; std .5; se .5/2
  mean, se = mean_stderr([1, 0, 1, 1])
  assert mean == pytest.approx(0.75)
  assert se == pytest.approx(0.25)
  mean, se = mean_stderr([True, False])
  assert (mean, se) == pytest.approx((0.5, math.sqrt(0.5) / math.sqrt(2)))
  mean, se = mean_stderr([3.0])
  assert mean == 3.0 and math.isnan(se)
  with pytest.raises(UserError, match="no values"):
    mean_stderr([])


def test_normal_ci():
  assert normal_ci(0.5, 0.1) == pytest.approx((0.5 - 0.1959964, 0.5 + 0.1959964))
  assert normal_ci(0.5, 0.1, z=1.0) == pytest.approx((0.4, 0.6))


def test_wilson_ci():
  lo, hi = wilson_ci(0, 10)
  assert lo == 0.0
  assert hi == pytest.approx(Z95**2 / (10 + Z95**2))      # 0.2775 at p = 0
  lo, hi = wilson_ci(10, 10)
  assert hi == 1.0 and lo == pytest.approx(10 / (10 + Z95**2))
  # 7 of 20, from the formula written out independently
  n, p, z = 20, 0.35, 1.959964
  center = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = (z / (1 + z * z / n)) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  assert wilson_ci(7, 20) == pytest.approx((center - half, center + half))
  assert wilson_ci(7, 20) == pytest.approx((0.1812, 0.5671), abs=1e-4)
  with pytest.raises(UserError, match="successes=11"):
    wilson_ci(11, 10)
  with pytest.raises(UserError, match="n must be"):
    wilson_ci(0, 0)


def _pass_at_k_brute(n, c, k):
  samples = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(samples, k))
  return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration():
  for n in range(1, 7):
    for c in range(n + 1):
      for k in range(1, n + 1):
        assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_brute(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_values_and_errors():
  assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
  assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
  assert pass_at_k(200, 0, 100) == 0.0
  assert 0.0 < pass_at_k(10_000, 1, 10) < 1.0             # no overflow for large n
  assert pass_at_k(10_000, 1, 10) == pytest.approx(10 / 10_000)
  with pytest.raises(UserError, match="k=6"):
    pass_at_k(5, 1, 6)
  with pytest.raises(UserError, match="c=6"):
    pass_at_k(5, 6, 1)
  with pytest.raises(UserError, match="k must be"):
    pass_at_k(5, 1, 0)
  assert mean_pass_at_k([4, 4], [0, 4], 2) == pytest.approx(0.5)
  with pytest.raises(UserError, match="2 sample counts but 1"):
    mean_pass_at_k([4, 4], [1], 2)


def test_majority_vote_groups_numbers_and_breaks_ties_by_first():
  assert majority_vote(["7", "18", "18.0", "7.00", "$18"]) == "18"   # 18: three votes
  assert majority_vote(["5", "6", "6", "5"]) == "5"                   # tie: 5 came first
  assert majority_vote(["6", None, None, "5"]) == "6"                 # None does not vote
  assert majority_vote(["Blue", "blue.", "red"]) == "Blue"            # normalized text
  assert majority_vote([None, None]) is None


def test_maj_at_k():
  answers = ["7", "18", "18.0", "7", "7"]
  assert maj_at_k(answers, "18", k=3)          # 18 and 18.0 outvote 7
  assert not maj_at_k(answers, "18", k=5)      # the two extra 7s win
  assert maj_at_k(answers, "7", k=1)
  assert maj_at_k(["9", "4"], "4.0", k=2) is False   # tie goes to the first, 9
  assert maj_at_k([None, None, None], "3", k=3) is False
  with pytest.raises(UserError, match="k=4"):
    maj_at_k(["1", "2"], "1", k=4)


def test_mcnemar_known_table():
  # 5 both, 2 a only, 8 b only, 3 neither: m = 10, p = 2 * (1 + 10 + 45) / 1024
  a = [1] * 5 + [1] * 2 + [0] * 8 + [0] * 3
  b = [1] * 5 + [0] * 2 + [1] * 8 + [0] * 3
  result = mcnemar_exact(a, b)
  assert result == {"n": 18, "both": 5, "a_only": 2, "b_only": 8, "neither": 3,
                    "p_value": 0.109375}
  assert mcnemar_exact(b, a)["p_value"] == 0.109375       # symmetric


def test_mcnemar_edges():
  same = [True, False, True]
  assert mcnemar_exact(same, same)["p_value"] == 1.0      # no discordant pairs
  assert mcnemar_exact([1, 0], [0, 1])["p_value"] == 1.0  # capped at 1
  big = mcnemar_exact([1] * 2000, [0] * 2000)             # exact where floats would underflow
  assert big["a_only"] == 2000 and 0.0 <= big["p_value"] < 1e-300
  with pytest.raises(UserError, match=r"len\(a\)=3 and len\(b\)=2"):
    mcnemar_exact([1, 0, 1], [1, 0])


def test_paired_bootstrap_identical():
  a = [1, 0, 1, 1, 0, 1, 0, 0]
  result = paired_bootstrap(a, a, n_resamples=500)
  assert result["diff"] == 0.0
  assert result["ci95"] == (0.0, 0.0)
  assert result["p_value"] == 1.0


def test_paired_bootstrap_strong_difference_and_seed():
  rng = np.random.default_rng(1)
  a = rng.random(200) < 0.8
  b = rng.random(200) < 0.3
  result = paired_bootstrap(a, b, n_resamples=2000, seed=3)
  assert result["diff"] == pytest.approx(a.mean() - b.mean())
  lo, hi = result["ci95"]
  assert 0.0 < lo < result["diff"] < hi
  assert result["p_value"] == pytest.approx(1 / 2001)     # nothing as extreme: +1 correction
  assert paired_bootstrap(a, b, n_resamples=2000, seed=3) == result
  assert paired_bootstrap(a, b, n_resamples=2000, seed=4)["ci95"] != result["ci95"]


def test_paired_bootstrap_small_difference_is_not_significant():
  a = [1, 0, 1, 0, 1, 0, 1, 0, 1, 1]
  b = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
  result = paired_bootstrap(a, b, n_resamples=2000)
  assert result["diff"] == pytest.approx(0.1)
  assert result["p_value"] > 0.3
  with pytest.raises(UserError, match=r"len\(a\)=2 and len\(b\)=1"):
    paired_bootstrap([1, 0], [1])
