"""The throughput benchmark runs (one tiny step) and writes what BENCHMARKS.md reports."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pretrain_throughput_smoke(tmp_path):
  out = tmp_path / "r.json"
  res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pretrain_throughput.py"),
                        "--presets", "tiny", "--batch", "2", "--seq", "32", "--steps", "2",
                        "--warmup", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
  assert res.returncode == 0, res.stdout + res.stderr
  data = json.loads(out.read_text())
  text = json.dumps(data)
  for key in ("tokens_per_s", "mfu", "flops_per_token", "jax_version"):
    assert key in text, key


def test_sample_throughput_smoke(tmp_path):
  """jaxslm's sampler (and transformers', when torch and transformers import) on `tiny`."""
  out = tmp_path / "s.json"
  res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sample_throughput.py"),
                        "--smoke", "--quantize", "none,int8,int8-dynamic", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
  assert res.returncode == 0, res.stdout + res.stderr
  data = json.loads(out.read_text())
  assert data["models"]["tiny"]["params_jaxslm"] > 0
  for fw in ("jaxslm", "jaxslm-int8", "jaxslm-int8-dynamic"):
    rows = [r for r in data["results"] if r["framework"] == fw]
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["bound_s"] > 0 and r["weight_bytes"] > 0 for r in rows), rows
  dyn, int8, fp = ([r["weight_bytes"] for r in data["results"] if r["framework"] == fw]
                   for fw in ("jaxslm-int8-dynamic", "jaxslm-int8", "jaxslm"))
  assert all(a < 0.4 * b for a, b in zip(dyn, fp))         # every matrix int8: under 40% of fp32
  assert all(a < b for a, b in zip(int8, fp))              # weight-only: the projections only
  assert data["bandwidth"]["bytes_per_s"] > 0
  for r in data["results"]:
    assert "error" not in r, r
    assert r["ttft_s"] > 0 and len(r["generate_samples_s"]) == 1, r
  if "hf" in data["settings"]["frameworks"]:
    assert data["models"]["tiny"]["params_hf"] == data["models"]["tiny"]["params_jaxslm"]
    assert data["models"]["tiny"]["logits_max_rel_error"] < 1e-4
    assert len(data["comparisons"]) == 6      # 2 batches x (fp32, int8, int8-dynamic) vs HF
  assert "| model | B |" in data["markdown_table"]


def test_eval_gsm8k_smoke(tmp_path):
  """The GSM8K evaluation benchmark on a random `tiny` model and 4 hand-made problems."""
  data = tmp_path / "gsm8k"
  data.mkdir()
  rows = [{"question": f"Tom has {i} apples and buys 2 more. How many?",
           "answer": f"{i}+2=<<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"} for i in range(4)]
  (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "e.json"
  res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_gsm8k.py"),
                        "--data", str(data), "--preset", "tiny", "--max-new-tokens", "8",
                        "--batch-size", "2", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
  assert res.returncode == 0, res.stdout + res.stderr
  r = json.loads(out.read_text())
  assert r["problems"] == 4 and r["new_tokens"] == 32 and r["wall_s"] > 0
  assert r["generate_s"] > 0 and r["metrics_s"] > 0 and r["jax"]


def test_gpu_suite_smoke(tmp_path):
  """benchmarks/gpu_suite.py --smoke: every command's flags exist in its script; the
  jaxslm parts run at tiny sizes on CPU and land in one JSON and one table."""
  res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert res.returncode == 0, res.stdout + res.stderr
  suite = json.loads((tmp_path / "suite.json").read_text())
  parts = {p["part"]: p for p in suite["parts"]}
  assert list(parts) == ["pretrain_jax", "pretrain_torch", "decode", "eval", "grpo"]
  for p in parts.values():
    assert p["ok"], p
    assert all(c["unknown_flags"] == [] for c in p["commands"]), p
  assert len(parts["grpo"]["commands"]) == 3
  decode = json.loads((tmp_path / "decode.json").read_text())
  assert {r["framework"] for r in decode["results"]} == {"jaxslm", "jaxslm-int8",
                                                        "jaxslm-int8-dynamic"}
  table = (tmp_path / "suite.md").read_text()
  assert "| pretrain tiny B2×32 | jaxslm |" in table


def _tiny_gsm8k_checkpoint(tmp_path):
  """A random `tiny` model with a SentencePiece tokenizer and a 12-problem GSM8K."""
  import jax
  from jaxslm.checkpoint import save_params
  from jaxslm.models import ModelConfig, init_params
  from jaxslm.tokenizers import train_sentencepiece
  data = tmp_path / "gsm8k"
  data.mkdir()
  rows = [{"question": f"Tom has {i} apples and buys {i % 7 + 2} more boxes of pears. How many?",
           "answer": f"{i}+2=<<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"} for i in range(12)]
  for split, part in (("train", rows[:8]), ("test", rows[8:])):
    (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
  tok = train_sentencepiece([r["question"] + " " + r["answer"] for r in rows] * 20,
                            vocab_size=320)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32", max_seq_len=512)
  ckpt = save_params(str(tmp_path / "m"), init_params(cfg, jax.random.PRNGKey(0)),
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  return ckpt, data


def _run_fewshot_benchmark(script: str, tmp_path) -> dict:
  """Run a few-shot sampling benchmark on the tiny checkpoint: 4 problems, batch 2,
  4 new tokens, one round; its JSON."""
  ckpt, data = _tiny_gsm8k_checkpoint(tmp_path)
  out = tmp_path / "result.json"
  res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script),
                        "--checkpoint", ckpt, "--data", str(data), "--problems", "4",
                        "--batch", "2", "--max-new-tokens", "4", "--repeats", "1",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stdout + res.stderr
  return json.loads(out.read_text())


def test_shared_prefix_smoke(tmp_path):
  """benchmarks/shared_prefix.py: 5-shot prompts share their exemplars, the
  completions are identical."""
  r = _run_fewshot_benchmark("shared_prefix.py", tmp_path)
  assert r["shared_prefix_tokens"] >= 64 and r["identical_completions"] == r["completions"] == 4
  assert r["shared"]["prefill_s"] > 0 and r["whole"]["prefill_s"] > 0


def test_compaction_smoke(tmp_path):
  """benchmarks/compaction.py: both arms run and agree."""
  r = _run_fewshot_benchmark("compaction.py", tmp_path)
  assert r["identical_completions"] == r["completions"] == 4 and r["new_tokens"] == 16
  assert r["compact_s"] > 0 and r["whole_batch_s"] > 0 and r["lockstep_waste"] == 1.0
