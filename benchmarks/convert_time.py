"""Conversion time and peak host memory, Hugging Face -> jaxslm -> Hugging Face.

    pip install -r requirements-dev.txt        # torch (CPU) + transformers build the models
    python benchmarks/convert_time.py --shapes smollm2_135m,qwen2_0p5b --dtype bfloat16 \\
        --out benchmarks/results/cpu_convert_time.json

For each shape: a random `transformers` model of that shape (Llama-shaped
SmolLM2-135M: 30 layers, d 576, 9 heads / 3 kv, FFN 1536, vocab 49,152;
Qwen2.5-0.5B-shaped: 24 layers, d 896, 14 / 2 heads, FFN 4864, vocab 151,936,
q/k/v biases, tied) is saved with `save_pretrained` in `--dtype`. Then
`launch/convert.py hf2jax` (to `--dtype`) and `jax2hf` each run in their own
process, timed by wall clock, with peak RSS from `getrusage(RUSAGE_CHILDREN)`
of a fresh waiter process (so each number is that one conversion's peak;
it counts the pages of memory-mapped files the process has touched too).

The baseline is the same measurement of a process that only imports what
the launcher imports (jax, jaxslm.convert) and starts the CPU backend. Each
row reports (peak - baseline) / model bytes (the safetensors size, which is
the model in `--dtype`): about 1 is one copy of the model, 2 two copies.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {
    "smollm2_135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         vocab_size=49152, max_position_embeddings=2048, rope_theta=10000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "qwen2_0p5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       vocab_size=151936, max_position_embeddings=4096, rope_theta=1e6,
                       rms_norm_eps=1e-6, tie_word_embeddings=True),
}

_TIMED = """
import resource, subprocess, sys, time, json
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


BASELINE = ("import jax, jax.numpy as jnp; from jaxslm import convert; from jaxslm.errors import "
            "report; jnp.zeros(1).block_until_ready()")


def timed(cmd) -> dict:
  out = subprocess.run([sys.executable, "-c", _TIMED, *cmd], capture_output=True, text=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  if result["rc"]:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  return result


def make_model(name: str, dtype: str, directory: str) -> int:
  import torch
  import transformers
  kw = dict(SHAPES[name])
  config = transformers.AutoConfig.for_model(kw.pop("model_type"), **kw)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config)
  model = model.to(getattr(torch, dtype))
  model.save_pretrained(directory)
  return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
             if f.endswith(".safetensors"))


def main(argv):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--shapes", default=",".join(SHAPES))
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  base = min(timed([sys.executable, "-c", BASELINE])["peak_rss_bytes"] for _ in range(3))
  print(json.dumps({"baseline_peak_rss_bytes": base}), flush=True)
  rows = []
  for name in args.shapes.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      hf, ck, back = (os.path.join(tmp, d) for d in ("hf", "ckpt", "back"))
      size = make_model(name, args.dtype, hf)
      convert = os.path.join(ROOT, "launch", "convert.py")
      a = timed([sys.executable, convert, "hf2jax", "--hf", hf, "--out", ck, "--dtype",
                 args.dtype, "--tokenizer", "gpt2"])
      b = timed([sys.executable, convert, "jax2hf", "--checkpoint", ck, "--out", back])
      rows.append({"shape": name, "safetensors_bytes": size,
                   "hf2jax_s": a["wall_s"], "hf2jax_peak_rss_bytes": a["peak_rss_bytes"],
                   "hf2jax_extra_over_model": (a["peak_rss_bytes"] - base) / size,
                   "jax2hf_s": b["wall_s"], "jax2hf_peak_rss_bytes": b["peak_rss_bytes"],
                   "jax2hf_extra_over_model": (b["peak_rss_bytes"] - base) / size})
      print(json.dumps(rows[-1]), flush=True)
  import jax
  result = {"command": "python benchmarks/convert_time.py " + " ".join(argv),
            "date": datetime.date.today().isoformat(), "jax": jax.__version__,
            "dtype": args.dtype, "baseline_peak_rss_bytes": base,
            "baseline_command": f"python -c {BASELINE!r}", "rows": rows}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
