"""benchmarks/real_model_chain.py end to end on a tiny model: every stage runs,
the JSON holds each stage's per-problem outcomes and the paired tests, and a
second run reuses the stages and their scores instead of redoing them."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax

from jaxslm.checkpoint import save_params
from jaxslm.data.synthetic import SyntheticMath
from jaxslm.data.templates import get_template
from jaxslm.models import ModelConfig, init_params
from jaxslm.tokenizers import train_sentencepiece

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _chain():
  spec = importlib.util.spec_from_file_location("real_model_chain",
                                                ROOT / "benchmarks" / "real_model_chain.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_the_chain_runs_every_stage_and_resumes_without_redoing(tmp_path, capsys):
  gen = SyntheticMath(0, max_steps=1)
  tmpl = get_template("structured")
  problems = [gen.problem(i) for i in range(48)]
  tok = train_sentencepiece([tmpl.prompt(p.question) + tmpl.target(p.answer, str(p.final_answer))
                             for p in problems], vocab_size=512)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256, dtype="float32")
  base = save_params(str(tmp_path / "base"), init_params(cfg, jax.random.PRNGKey(0)),
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  data = tmp_path / "gsm8k"
  data.mkdir()
  for split, part in (("train", problems[:40]), ("test", problems[40:])):
    (data / f"{split}.jsonl").write_text("".join(
        json.dumps({"question": p.question, "answer": f"{p.answer}\n#### {p.final_answer}"}) + "\n"
        for p in part))
  out = tmp_path / "chain.json"
  argv = ["--checkpoint", base, "--data", str(data), "--workdir", str(tmp_path / "w"),
          "--sft-steps", "2", "--batch-size", "2", "--seq-len", "200", "--sft-lr", "1e-3",
          "--grpo-steps", "1", "--max-steps", "1", "--eval-problems", "4",
          "--synthetic-problems", "4", "--max-new-tokens", "12", "--eval-batch-size", "4",
          "--set", "grpo.prompts_per_step=2", "--set", "grpo.grad_accum=2",
          "--set", "grpo.max_new_tokens=12", "--set", "data.prompt_budget=96",
          "--out", str(out)]
  chain = _chain()
  assert chain.main(argv) == 0
  first = capsys.readouterr().out
  result = json.loads(out.read_text())
  assert list(result["stages"]) == ["base", "sft", "grpo"]
  assert result["grpo_from"] in ("base", "sft")
  for stage in result["stages"].values():
    for key in ("gsm8k", "synthetic"):
      s = stage[key]
      assert s["n"] == len(s["correct"]) == 4 and 0 <= s["accuracy"] <= 1
  assert len(result["tests"]) == 12   # 3 pairs x 2 sets x (strict, flexible)
  for t in result["tests"].values():
    assert 0 <= t["mcnemar"]["p_value"] <= 1 and 0 <= t["bootstrap"]["p_value"] <= 1
  assert out.with_suffix(".png").is_file()
  assert (tmp_path / "w" / "sft" / "export").is_dir()
  assert (tmp_path / "w" / "grpo" / "export").is_dir()
  assert "sft: scoring" in first and "grpo: scoring" in first
  # Again: every stage's model and scores come from the first run.
  assert chain.main(argv) == 0
  again = capsys.readouterr().out
  for stage in ("base", "sft", "grpo"):
    assert f"{stage}: reusing the scores in {out}" in again
  assert "scoring" not in again.replace("reusing the scores", "")
  assert json.loads(out.read_text())["stages"] == result["stages"]


def test_an_earlier_results_file_is_checked_before_its_scores_are_reused(tmp_path, capsys):
  """Half-written, empty, not the chain's, other settings, or a stage whose outcome
  lists do not match the problems: one line each, and those scores are not reused."""
  import argparse
  chain = _chain()
  problems = {"gsm8k": [0, 1, 2], "synthetic": [0, 1]}
  args = argparse.Namespace(out=str(tmp_path / "r.json"), data="d", template="structured",
                            max_steps=2, eval_problems=3, synthetic_problems=2,
                            max_new_tokens=16, eval_batch_size=4)

  def scores(n, right):
    return {"accuracy": right / n, "correct": [i < right for i in range(n)],
            "flexible_correct": [False] * n}
  good = {"path": "p", "gsm8k": scores(3, 1), "synthetic": scores(2, 2)}
  settings = {k: getattr(args, k) for k in chain.SCORING}
  whole = json.dumps({"settings": settings, "stages": {"base": good}})
  out = pathlib.Path(args.out)
  assert chain.earlier_scores(args, problems) == {}                       # no file: silent
  out.write_text(whole)
  assert chain.earlier_scores(args, problems) == {"base": good}
  for text, said in ((whole[:len(whole) // 2], "not readable"), ("", "not readable"),
                     ("[1, 2]", "no settings and stages"),
                     (json.dumps({"settings": {**settings, "eval_problems": 9},
                                  "stages": {"base": good}}), "other scoring settings")):
    out.write_text(text)
    assert chain.earlier_scores(args, problems) == {}
    assert said in capsys.readouterr().out
  for bad in ({**good, "gsm8k": {**scores(3, 1), "correct": [True] * 10**6}},   # absurd length
              {**good, "gsm8k": {**scores(3, 1), "accuracy": 0.9}},             # contradicts
              {**good, "synthetic": "x"}, {"gsm8k": good["gsm8k"]}):
    out.write_text(json.dumps({"settings": settings, "stages": {"base": good, "sft": bad}}))
    assert chain.earlier_scores(args, problems) == {"base": good}
    assert "stage(s) sft without one outcome per problem" in capsys.readouterr().out
