"""GSM8K evaluation end to end: scripted models with known answers, and launch/eval.py on a
tiny checkpoint producing the JSON summary, the per-example JSONL and the Markdown report."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxslm.checkpoint import save_params
from jaxslm.data.gsm8k import Example
from jaxslm.data.synthetic import SyntheticMath
from jaxslm.errors import UserError
from jaxslm.evaluation import EvalOptions, evaluate_gsm8k
from jaxslm.evaluation.cli import main as eval_main, parse, run
from jaxslm.evaluation.report import markdown, paired, write_report
from jaxslm.models import ModelConfig, init_params
from jaxslm.tokenizers import train_sentencepiece
from tests.scripted import CharTokenizer, bigram_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDS = ["7", "7", "8", "7", "9"]
PROBLEMS = [Example(i, f"Problem {i}: how many?", f"Some steps.\n#### {g}", g)
            for i, g in enumerate(GOLDS)]


def scripted(answer: str):
  """Writes " <answer>" after "Answer:", then EOS."""
  cfg, params = bigram_model({":": " ", " ": answer})
  return cfg, params, CharTokenizer()


OPTS = EvalOptions(template="final-only", max_new_tokens=8, batch_size=2)


def test_scripted_models_score_exactly():
  a = evaluate_gsm8k(scripted("7"), PROBLEMS, OPTS)
  b = evaluate_gsm8k(scripted("8"), PROBLEMS, OPTS)
  assert [r["completion"] for r in a.records] == [" 7"] * 5
  assert [r["correct"] for r in a.records] == [True, True, False, True, False]
  assert [r["extracted"] for r in b.records] == ["8"] * 5
  acc = a.summary["accuracy"]
  assert acc["mean"] == pytest.approx(0.6) and acc["n"] == 5
  assert acc["stderr"] == pytest.approx(np.std([1, 1, 0, 1, 0], ddof=1) / np.sqrt(5))
  assert a.summary["primary_extractor"] == "flexible-extract"
  assert a.summary["errors"] == {"wrong_reasoning": 2}
  assert a.summary["finish_reasons"] == {"eos": 5}
  assert a.summary["perplexity"]["tokens"] == 10        # " 7" etc: 2 characters each
  assert 0 < a.records[0]["rouge1"] <= 1
  cmp = paired(a.records, b.records)   # b vs a: b gains 1 (problem 2), loses 3
  assert (cmp["n"], cmp["better"], cmp["worse"]) == (5, 1, 3)
  assert cmp["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)
  assert cmp["diff"] == pytest.approx(0.2 - 0.6)
  text = markdown([("seven", a.summary, a.records), ("eight", b.summary, b.records)])
  assert "| seven | 60.0 ± 24.5" in text and "0.625" in text


def test_pass_at_k_and_majority_with_samples():
  opts = EvalOptions(template="final-only", max_new_tokens=8, n=4, temperature=1.0,
                     pass_k=(1, 2, 4), rouge=False, perplexity=False)
  out = evaluate_gsm8k(scripted("7"), PROBLEMS, opts)
  assert [r["num_correct"] for r in out.records] == [4, 4, 0, 4, 0]
  assert out.summary["pass_at_k"] == {"1": pytest.approx(0.6), "2": pytest.approx(0.6),
                                      "4": pytest.approx(0.6)}
  assert out.summary["maj_at_k"]["4"] == pytest.approx(0.6)
  assert len(out.records[0]["samples"]) == 4
  acc = out.summary["accuracy"]   # over problems (5), not samples (20)
  assert acc["n"] == 5 and "ci95_wilson" not in acc
  assert acc["stderr"] == pytest.approx(np.std([1, 1, 0, 1, 0], ddof=1) / np.sqrt(5))


def test_agent_mode_reads_the_final_answer_line(monkeypatch):
  import jaxslm.agent
  calls = []

  def fake_generator(model, **kw):
    def generate(prompts, stop, max_new_tokens):
      calls.append(len(prompts))
      return [" I add them.\nFinal Answer: 7 apples" for _ in prompts]
    return generate

  monkeypatch.setattr(jaxslm.agent, "model_generator", fake_generator)
  out = evaluate_gsm8k(scripted("7"), PROBLEMS, EvalOptions(mode="agent", batch_size=2,
                                                           rouge=False, perplexity=False))
  assert calls == [2, 2, 1]            # one round, chunked by batch_size
  assert [r["extracted"] for r in out.records] == ["7"] * 5
  assert [r["correct"] for r in out.records] == [True, True, False, True, False]
  assert out.records[0]["agent_stop"] == "final_answer"
  assert out.records[0]["prompt"].endswith("Question: Problem 0: how many?\nThought:")


def test_kept_stop_string_is_put_back():
  from jaxslm.data.templates import get_template
  from jaxslm.evaluation.gsm8k import _with_kept_stop
  from jaxslm.sampling.generate import Completion
  tok = CharTokenizer()
  text = "<reasoning>3+4=7</reasoning>\n<solution>7"
  c = Completion(0, 0, tok.encode(text + "</solution>"), np.zeros(0), "stop_string", text)
  assert _with_kept_stop(c, tok, get_template("structured")).endswith("<solution>7</solution>")
  assert _with_kept_stop(c, tok, get_template("qa")) == text
  c = Completion(0, 0, tok.encode(text + "Question:"), np.zeros(0), "stop_string", text)
  assert _with_kept_stop(c, tok, get_template("structured")) == text


def test_bad_options():
  with pytest.raises(UserError, match="temperature > 0"):
    evaluate_gsm8k(scripted("7"), PROBLEMS, EvalOptions(n=4))
  with pytest.raises(UserError, match="valid templates"):
    evaluate_gsm8k(scripted("7"), PROBLEMS, EvalOptions(template="nope"))
  with pytest.raises(UserError, match="strict-match"):
    evaluate_gsm8k(scripted("7"), PROBLEMS, EvalOptions(extractors=("nope",)))
  with pytest.raises(UserError, match=r"k must be in \[1, n=2\]"):
    evaluate_gsm8k(scripted("7"), PROBLEMS, EvalOptions(n=2, temperature=1.0, pass_k=(4,)))


# ------------------------------------------------------------ launch/eval.py
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  docs = [f"Question: {p.question}\nAnswer: {p.answer}" for p in
          (SyntheticMath(0).problem(i) for i in range(300))]
  tok = train_sentencepiece(docs, vocab_size=400)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(1))
  return save_params(str(tmp_path_factory.mktemp("ckpt") / "model"), params,
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("gsm8k")
  gen = SyntheticMath(5)
  for split, start in (("train", 0), ("test", 100)):
    with open(d / f"{split}.jsonl", "w") as f:
      for i in range(start, start + 12):
        p = gen.problem(i)
        f.write(json.dumps({"question": p.question, "answer": p.answer}) + "\n")
      if split == "test":
        f.write('{"question": "no answer field"}\n')
  return d


def test_launcher_writes_summary_examples_and_report(checkpoint, data_dir, tmp_path):
  out = tmp_path / "eval"
  proc = subprocess.run(
      [sys.executable, str(ROOT / "launch/eval.py"), "--checkpoint", checkpoint,
       "--checkpoint", checkpoint, "--label", "a", "--label", "b", "--data", str(data_dir),
       "--limit", "8", "--max-new-tokens", "12", "--batch-size", "4", "--out", str(out),
       "--similarity-model", "off"],   # the metric is tested in test_similarity.py
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary) == {"a", "b"}
  s = summary["a"]
  assert s["problems"] == 8 and s["dataset"]["skipped"] == 1 and s["dataset"]["rows"] == 13
  assert any("malformed" in n for n in s["notes"])
  for key in ("accuracy", "extractors", "format", "rouge1", "perplexity", "efficiency", "errors"):
    assert key in s, key
  assert s["efficiency"]["ms_per_token"] > 0 and s["efficiency"]["peak_host_rss_bytes"] > 0
  rows = [json.loads(line) for line in (out / "a" / "examples.jsonl").read_text().splitlines()]
  assert len(rows) == 8
  for key in ("question", "prompt", "completion", "extracted", "gold", "correct", "category",
              "tokens", "time_s"):
    assert key in rows[0], key
  assert rows[0]["prompt"].startswith("Question: ")
  b_rows = [json.loads(x) for x in (out / "b" / "examples.jsonl").read_text().splitlines()]
  assert [r["completion"] for r in rows] == [r["completion"] for r in b_rows]   # greedy
  report = (out / "report.md").read_text()
  assert "| a |" in report and "Paired comparison with a" in report
  assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_fewshot_and_agent_modes_and_limit_note(checkpoint, data_dir, tmp_path):
  logs = []
  s = run(parse(["--checkpoint", checkpoint, "--data", str(data_dir), "--limit", "3",
                 "--num-fewshot", "2", "--max-new-tokens", "8", "--no-perplexity",
                 "--out", str(tmp_path / "fs")]), log=logs.append)["model"]
  assert s["mode"] == "few-shot" and s["num_fewshot"] == 2
  # 2-shot prompts do not fit the tiny model's 128-token context: skipped, counted, noted
  assert s["prompts_skipped"] == 3 and any("not generated" in n for n in s["notes"])
  assert s["finish_reasons"] == {"prompt_too_long": 3} and s["prompts_truncated"] == 0
  row = json.loads((tmp_path / "fs/model/examples.jsonl").read_text().splitlines()[0])
  assert row["prompt"].count("Question: ") == 3 and row["prompt"].endswith("\nAnswer:")
  s = run(parse(["--checkpoint", checkpoint, "--data", str(data_dir), "--limit", "50",
                 "--mode", "agent", "--agent-max-steps", "2", "--max-new-tokens", "8",
                 "--no-rouge", "--out", str(tmp_path / "ag")]), log=logs.append)["model"]
  assert s["mode"] == "agent" and s["problems"] == 12
  assert any("larger than" in n for n in s["notes"])
  row = json.loads((tmp_path / "ag/model/examples.jsonl").read_text().splitlines()[0])
  assert row["agent_stop"] in ("final_answer", "step_limit", "no_action", "context_full")


def test_launcher_bad_input_exits_2(checkpoint, data_dir, tmp_path, capsys):
  rc = eval_main(["--checkpoint", checkpoint, "--data", str(data_dir), "--extractors", "bogus",
                  "--out", str(tmp_path)])
  assert rc == 2 and "flexible-extract" in capsys.readouterr().err


def test_json_outputs_never_hold_nan(tmp_path, data_dir, checkpoint):
  from jaxslm.evaluation.cli import _finite
  assert _finite({"a": float("nan"), "b": [1.0, float("inf")], "c": "x"}) == \
      {"a": None, "b": [1.0, None], "c": "x"}
  with pytest.raises(UserError, match="is a file"):
    run(parse(["--checkpoint", checkpoint, "--data", str(data_dir / "test.jsonl"),
               "--num-fewshot", "2", "--out", str(tmp_path)]), log=lambda s: None)


def test_a_stopped_evaluation_resumes_where_it_stopped(checkpoint, data_dir, tmp_path,
                                                       monkeypatch):
  """launch/eval.py keeps each batch's generations in <label>/progress.jsonl. A
  run stopped after its first batch, run again, reads those problems back,
  generates only the rest and writes what one whole run writes; the file is
  then removed. A file of other settings starts over; a line cut by an
  interrupted write is said and its problem runs again."""
  import importlib
  gen_mod = importlib.import_module("jaxslm.sampling.generate")
  argv = ["--checkpoint", checkpoint, "--data", str(data_dir), "--limit", "8",
          "--max-new-tokens", "10", "--batch-size", "3", "--token-budget", "0", "--no-perplexity",
          "--no-rouge", "--similarity-model", "off"]
  run(parse(argv + ["--out", str(tmp_path / "whole")]), log=lambda _: None)

  real, calls = gen_mod.generate, []

  def stop_at_second_batch(*a, **k):
    calls.append(len(a[2]))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(*a, **k)
  monkeypatch.setattr(gen_mod, "generate", stop_at_second_batch)
  out = tmp_path / "stopped"
  with pytest.raises(KeyboardInterrupt):
    run(parse(argv + ["--out", str(out)]), log=lambda _: None)
  progress = out / "model/progress.jsonl"
  lines = progress.read_text().splitlines()
  assert len(lines) == 1 + 3 and json.loads(lines[0])["kind"] == "jaxslm-eval-progress"
  assert not (out / "model/examples.jsonl").exists()

  calls.clear()
  monkeypatch.setattr(gen_mod, "generate", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
  said = []
  run(parse(argv + ["--out", str(out)]), log=said.append)
  # 2 of the 8 prompts do not fit the tiny model's context: skipped (and said) in every run
  assert any("resumed: 3 of 6 problems read back" in s and "the other 3" in s for s in said), said
  assert sum(calls) == 3
  # rates count the problems generated here, not those read back
  eff = json.loads((out / "model/summary.json").read_text())["efficiency"]
  assert eff["problems_generated"] == 3 and eff["problems_per_min"] is not None
  assert _rows(out / "model/examples.jsonl") == _rows(tmp_path / "whole/model/examples.jsonl")
  assert not progress.exists()

  # other settings: said, started over; a cut line: said, its problem generated again
  progress.write_text(lines[0].replace('"max_new_tokens": 10', '"max_new_tokens": 11') + "\n"
                      + "\n".join(lines[1:]) + "\n")
  said.clear()
  run(parse(argv + ["--out", str(out)]), log=said.append)
  assert any("another model or other settings; starting over" in s for s in said), said
  assert not any("resumed" in s for s in said)
  progress.write_text("\n".join(lines) + "\n" + lines[-1][:25])
  said.clear()
  calls.clear()
  run(parse(argv + ["--out", str(out)]), log=said.append)
  assert any("1 unreadable line(s)" in s for s in said) and sum(calls) == 3, said
  assert any("resumed: 3 of 6" in s for s in said), said


def _rows(path):
  """examples.jsonl without each row's time_s (the one field a second run does not reproduce)."""
  rows = [json.loads(x) for x in path.read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.mark.parametrize("content,said", [
    ("", "not a progress file"), ("\x00\xff garbage", "not a progress file"),
    ('[1, 2]\n', "another model or other settings"),
    ('{"kind": "jaxslm-eval-progress", "version": 1, "key": {"n": 1}}\n'
     '{"index": 3, "prompt": "ab", "samples": [{"completion": "x", "tokens": 99999999999999999999,'
     ' "finish_reason": "eos"}, {"completion": "y", "tokens": 1, "finish_reason": "eos"}], '
     '"time_s": 1}\n{"index": 4, "prompt": "cd", "samples": [{"completion": 7}], "time_s": 1}\n'
     '{"index": 5, "prompt"', "3 unreadable line(s)")])
def test_progress_files_made_elsewhere_are_said_and_started_over(tmp_path, content, said):
  """A damaged, foreign or hostile progress file: one console line, nothing reused."""
  from jaxslm.evaluation.progress import Progress
  path = tmp_path / "progress.jsonl"
  path.write_bytes(content.encode("utf-8", errors="surrogateescape"))
  logs = []
  p = Progress(str(path), {"n": 1}, logs.append)
  assert len(logs) == 1 and said in logs[0], logs
  assert p.rows == {} and json.loads(path.read_text().splitlines()[0])["key"] == {"n": 1}
