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
