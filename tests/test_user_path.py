"""The traps a new user hits, each pinned: prompts cut silently by evaluation, fine-tuning
data dropped silently, `--limit 0`, a bad second --checkpoint found late, notebook reprs of
hundreds of KB, flat vs nested texts, and launch/sample.py's error on the prompt's line."""

import importlib.util
import pathlib
import sys
import warnings

import jax
import numpy as np
import pytest

import jaxslm
from jaxslm.checkpoint import save_params
from jaxslm.data import sft
from jaxslm.data.gsm8k import Example
from jaxslm.errors import UserError
from jaxslm.evaluation import EvalOptions, budget, evaluate_gsm8k
from jaxslm.models import ModelConfig
from jaxslm.models.summary import param_shapes
from jaxslm.sampling import generate
from jaxslm.tokenizers import train_sentencepiece
from tests.scripted import CharTokenizer, bigram_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
CTX = 64
# final-only prompts: "Question: <q>\nAnswer:"; the model writes " 7" then EOS.
SHORT = [Example(i, f"Problem {i}: how many?", "#### 7", "7") for i in range(3)]
LONG = Example(9, "x" * 60, "#### 7", "7")    # 78 characters > CTX - 16


@pytest.fixture(scope="module")
def scripted():
  """Writes " 7" after "Answer:", then EOS. Every generate call below runs at one set of
  bucketed shapes (batch 4, prompt 64, budget 32), so they share their compilations."""
  cfg, params = bigram_model({":": " ", " ": "7"}, max_seq_len=CTX)
  return cfg, params, CharTokenizer()


@pytest.fixture
def spy(monkeypatch):
  """The prompts `generate` actually ran, as token lists."""
  gen = sys.modules["jaxslm.sampling.generate"]   # the module, not the function
  real, seen = gen.generate, []

  def spying(*args, **kwargs):
    out = real(*args, **kwargs)
    seen.extend(out.prompt_tokens)
    return out
  monkeypatch.setattr(gen, "generate", spying)
  return seen


def test_eval_with_a_budget_as_long_as_the_context_keeps_every_prompt(scripted, spy):
  """max_new_tokens = the context used to left-truncate every prompt to one token."""
  tok, logs = CharTokenizer(), []
  opts = EvalOptions(template="final-only", max_new_tokens=CTX, rouge=False, perplexity=False)
  out = evaluate_gsm8k(scripted, SHORT, opts, log=logs.append)
  assert sorted(spy) == sorted(tok.encode(r["prompt"]) for r in out.records)   # whole prompts
  assert [r["completion"] for r in out.records] == [" 7"] * 3
  assert out.summary["accuracy"]["mean"] == 1.0
  s = out.summary
  assert (s["budget_cut"], s["prompts_skipped"], s["prompts_truncated"]) == (3, 0, 0)
  assert any("their budget is the rest of the context" in line for line in logs)
  assert repr(out) == ("EvalResult(zero-shot 'final-only': accuracy 100.0% ± 0.0 on 3 "
                       "problems; budget_cut 3; .summary, .records)")


def test_a_prompt_too_long_for_the_context_is_skipped_cut_or_refused(scripted, spy):
  problems = SHORT + [LONG]
  tok = CharTokenizer()
  opts = EvalOptions(template="final-only", max_new_tokens=CTX, rouge=False, perplexity=False)
  with pytest.warns(UserWarning, match="1 of 4 prompts are longer than the model's 64-token"):
    out = evaluate_gsm8k(scripted, problems, opts)     # no log (fine-tuning's): a warning
  long_rec = out.records[-1]
  assert (long_rec["finish_reason"], long_rec["correct"], long_rec["category"]) == (
      "prompt_too_long", False, "incomplete")
  assert out.summary["prompts_skipped"] == 1 and out.summary["accuracy"]["mean"] == 0.75
  assert any("not generated" in n for n in out.summary["notes"])
  assert len(spy) == 3                                  # the long one never ran
  logs = []
  with warnings.catch_warnings():
    warnings.simplefilter("error")                       # a log: said there, not twice
    evaluate_gsm8k(scripted, problems, opts, log=logs.append)
  assert any("1 of 4 prompts" in line and "not generated" in line for line in logs)

  spy.clear()
  with pytest.warns(UserWarning, match="first tokens were cut"):
    out = evaluate_gsm8k(scripted, problems, EvalOptions(
        template="final-only", max_new_tokens=CTX, long_prompts="truncate", rouge=False,
        perplexity=False))
  full = tok.encode(out.records[-1]["prompt"])
  assert full[-(CTX - 16):] in spy                     # room for min_budget=16
  assert out.summary["prompts_truncated"] == 1 and out.records[-1]["completion"] == " 7"

  with pytest.raises(UserError, match="1 of 4 prompts are longer"):
    evaluate_gsm8k(scripted, problems, EvalOptions(
        template="final-only", max_new_tokens=8, long_prompts="error"))
  with pytest.raises(UserError, match="long_prompts='cut'"):
    evaluate_gsm8k(scripted, problems, EvalOptions(long_prompts="cut"))


def test_budget_plan_against_a_plain_loop():
  rng = np.random.default_rng(0)
  ids = [list(range(int(n))) for n in rng.integers(1, 80, 40)]
  for max_new, min_new in ((64, 16), (8, 16), (200, 1)):
    plan = budget.plan(ids, CTX, max_new, min_budget=min_new, long_prompts="skip")
    need = min(min_new, max_new)
    assert plan.skipped == [i for i, x in enumerate(ids) if CTX - len(x) < need]
    assert plan.budget_cut == [i for i, x in enumerate(ids)
                               if CTX - len(x) >= need and CTX - len(x) < max_new]
    for i in set(range(len(ids))) - set(plan.skipped):
      assert plan.budget(i) == min(max_new, CTX - len(ids[i])) >= need


def test_generate_truncate_cuts_only_what_leaves_too_little_room(scripted):
  """The old rule kept the last max(1, context - max_new_tokens) tokens: here one."""
  cfg, params, _ = scripted
  fits = list(range(1, 41))                          # 24 tokens of room: not cut
  long = list(np.arange(1, 71) % 100 + 1)            # past the context
  with pytest.warns(UserWarning, match="keeping its last 48 tokens"):
    out = generate(cfg, params, [fits, long, fits, fits], max_new_tokens=CTX, truncate=True)
  assert out.prompt_tokens == [fits, long[-48:], fits, fits] and out.truncated == [1]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = generate(cfg, params, [fits] * 4, max_new_tokens=CTX, truncate=True)
  assert out.truncated == [] and out.prompt_tokens == [fits] * 4


def test_fine_tuning_data_warns_when_over_a_tenth_is_dropped():
  tok = CharTokenizer()
  short = [sft.SFTExample("Q:", " 1")] * 9
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    sft.encode(short + [sft.SFTExample("Q:" * 20, " 1")], tok, max_len=8)   # 1 of 10: quiet
  with pytest.warns(UserWarning, match=r"2 of 10 fine-tuning examples \(20%\).*train.seq_len"):
    enc, dropped = sft.encode(short[:8] + [sft.SFTExample("Q:" * 20, " 1")] * 2, tok, max_len=8)
  assert dropped == 2 and len(enc) == 8


# ------------------------------------------------------------ a saved checkpoint
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  tok = train_sentencepiece([f"Question: {i} + {i} = {2 * i}\nAnswer: {2 * i}" for i in range(200)],
                            vocab_size=300)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=CTX, dtype="float32")
  rng = np.random.default_rng(0)   # random weights without compiling init_params
  params = jax.tree.map(lambda x: rng.normal(0, 0.05, x.shape).astype(x.dtype),
                        param_shapes(cfg))
  path = save_params(str(tmp_path_factory.mktemp("ckpt") / "model"), params,
                     {"model": cfg.to_dict(), "tokenizer": tok.spec(), "step": 5})
  return path, cfg, tok


PROMPTS = ["1 + 1 =", "2 + 2 =", "3 +", "4"]
SAMPLING = dict(n=2, temperature=1.0, max_new_tokens=6, seed=3)


def test_notebook_reprs_are_short(saved):
  path, cfg, tok = saved
  loaded = jaxslm.load(path)
  text = repr(loaded)
  assert len(text) < 400 and "sentencepiece" in text and path in text and "float32" in text
  n_params = sum(x.size for x in jax.tree.leaves(loaded.params))
  assert f"{n_params:,} params" in text and "context 64" in text
  out = jaxslm.sample(loaded, PROMPTS, return_result=True, **SAMPLING)
  text = repr(out)
  assert len(text) < 800 and "4 prompts x n=2" in text and "4 more" in text
  assert "array" not in text and "array" not in repr(out.completions[0])


def test_result_texts_nested_like_the_default_return(saved):
  path = saved[0]
  nested = jaxslm.sample(path, PROMPTS, **SAMPLING)
  out = jaxslm.sample(path, PROMPTS, return_result=True, **SAMPLING)
  assert out.texts_by_prompt == nested and [len(g) for g in nested] == [2] * 4
  assert out.texts == [t for group in nested for t in group]     # flat, prompt-major


def _launcher(name):
  spec = importlib.util.spec_from_file_location(f"launch_{name}", ROOT / "launch" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_sample_launcher_error_starts_on_its_own_line(saved, capsys):
  rc = _launcher("sample").main(["--checkpoint", saved[0], "--prompt", "1 + 1 =", "--top-k", "0"])
  out, err = capsys.readouterr()
  assert rc == 2 and out == "1 + 1 =\n" and err.startswith("error: top_k=0")


def test_eval_checks_every_input_before_any_work(saved, tmp_path, monkeypatch, capsys):
  from jaxslm.evaluation import cli
  calls = []
  monkeypatch.setattr(cli, "evaluate_gsm8k", lambda *a, **k: calls.append(a))
  monkeypatch.setattr(cli, "_load_problems", lambda *a, **k: calls.append("data"))
  base = ["--checkpoint", saved[0], "--out", str(tmp_path / "out"), "--data", str(tmp_path)]
  cases = [
      (["--checkpoint", str(tmp_path / "missing")], FileNotFoundError, "missing"),
      (["--limit", "0"], UserError, "--limit 0 is invalid"),
      (["--ppl-text", str(tmp_path / "nope.txt")], UserError, "nope.txt"),
      (["--mode", "few-shot"], UserError, "num_fewshot >= 1"),
  ]
  for extra, kind, match in cases:
    with pytest.raises(kind, match=match):
      cli.run(cli.parse(base + extra), log=lambda s: None)
  assert calls == [] and not (tmp_path / "out").exists()
  rc = cli.main(base + ["--limit", "0"])
  assert rc == 2 and "--limit 0 is invalid" in capsys.readouterr().err
