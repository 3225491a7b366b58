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
