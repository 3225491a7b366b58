"""Token-budget batches (jaxslm.sampling.batching): every rule checked against a
plain restatement, on random lengths; the evaluation with a small budget runs
more, smaller batches and writes the same greedy completions."""

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from jaxslm.errors import UserError
from jaxslm.models import ModelConfig
from jaxslm.sampling import batching
from jaxslm.sampling.engine import prompt_bucket


def _cost(lengths, batch, max_new, n):
  """generate's cache for this batch: rows and new tokens padded to powers of two."""
  pow2 = lambda x, lo: 1 << (max(x, lo) - 1).bit_length()
  return pow2(len(batch), 1) * n * (prompt_bucket(max(lengths[i] for i in batch)) + 1
                                    + pow2(max_new, 8))


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 3000), min_size=1, max_size=60),
       max_new=st.integers(1, 512), max_rows=st.integers(1, 16), n=st.integers(1, 4),
       budget=st.one_of(st.just(0), st.integers(1, 200_000)), ascending=st.booleans())
def test_plan_keeps_order_rows_and_budget_and_closes_batches_only_when_needed(
    lengths, max_new, max_rows, n, budget, ascending):
  lengths = sorted(lengths, reverse=not ascending)
  batches = batching.plan(lengths, max_new_tokens=max_new, max_rows=max_rows,
                          token_budget=budget, n=n)
  assert [i for b in batches for i in b] == list(range(len(lengths)))   # all, in order
  for k, b in enumerate(batches):
    assert 1 <= len(b) <= max_rows
    assert not budget or len(b) == 1 or _cost(lengths, b, max_new, n) <= budget
    if k + 1 < len(batches):   # closed only because the next prompt did not fit
      grown = b + [batches[k + 1][0]]
      assert len(grown) > max_rows or (budget and _cost(lengths, grown, max_new, n) > budget)


def test_default_budget_follows_free_memory_and_the_cache_bytes():
  cfg = ModelConfig.preset("tiny", dtype="float32")
  per_slot = batching.kv_bytes_per_slot(cfg)
  kv = cfg.n_kv_heads or cfg.n_heads
  assert per_slot == 2 * cfg.n_layers * kv * (cfg.head_dim or cfg.d_model // cfg.n_heads) * 4
  half = ModelConfig.preset("tiny", dtype="bfloat16")
  assert batching.kv_bytes_per_slot(half) * 2 == per_slot
  free = batching.free_memory_bytes()
  assert free > 0
  assert batching.default_token_budget(cfg) == pytest.approx(free * 0.25 / per_slot, rel=0.2)


def test_bad_plans_are_refused():
  with pytest.raises(UserError, match="max_rows=0"):
    batching.plan([3], max_new_tokens=4, max_rows=0, token_budget=0)
  with pytest.raises(UserError, match="token_budget=-1"):
    batching.plan([3], max_new_tokens=4, max_rows=2, token_budget=-1)


def test_evaluation_under_a_small_budget_runs_smaller_batches_with_the_same_completions():
  import jax
  from jaxslm.data.gsm8k import Example
  from jaxslm.data.synthetic import SyntheticMath
  from jaxslm.evaluation import EvalOptions, evaluate_gsm8k
  from jaxslm.models import init_params
  from jaxslm.tokenizers import train_sentencepiece
  gen = SyntheticMath(0)
  probs = [gen.problem(i) for i in range(300)]
  tok = train_sentencepiece([f"Question: {p.question}\nAnswer: {p.answer}" for p in probs],
                            vocab_size=400)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256, dtype="float32")
  model = (cfg, init_params(cfg, jax.random.PRNGKey(4)), tok)
  problems = [Example(i, p.question, p.answer, str(p.final_answer))
              for i, p in enumerate(probs[:10])]
  notes = []
  runs = {b: evaluate_gsm8k(model, problems, EvalOptions(
      template="qa", max_new_tokens=12, batch_size=8, token_budget=b, rouge=False,
      perplexity=False), log=notes.append if b else (lambda m: None)) for b in (0, 200)}
  assert runs[0].summary["efficiency"]["batches"] == 2            # 10 rows, 8 at most
  small = runs[200].summary["efficiency"]["batches"]
  assert small > 2 and any("under a budget of 200 cache slots" in m for m in notes)
  assert [r["completion"] for r in runs[0].records] == [r["completion"] for r in runs[200].records]
