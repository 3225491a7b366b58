"""Wall time of a greedy GSM8K evaluation: the full test set, 256 new tokens.

    python benchmarks/eval_gsm8k.py --data ../shared/data/gsm8k --preset slm26m \\
        --max-new-tokens 256 --batch-size 64 --out benchmarks/results/cpu_eval_gsm8k.json
    python benchmarks/eval_gsm8k.py --data ../shared/data/gsm8k --checkpoint runs/sft

Without --checkpoint it evaluates the preset with random weights
(`init_params`, PRNGKey(0)) and the GPT-2 tokenizer (tiktoken r50k_base). A
random model never writes EOS or "Question:", so every problem generates all
`--max-new-tokens` tokens: the worst case for a trained model's time. The
measured time is the whole `evaluate_gsm8k` call as a user runs it: prompt
encoding, compilation, batched generation, scoring, ROUGE-1 and the
perplexity of every reference solution (`generate_s` and `metrics_s` split it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import jax


def main(argv):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", required=True, help="local GSM8K directory")
  ap.add_argument("--checkpoint", default=None)
  ap.add_argument("--preset", default="slm26m")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--limit", type=int, default=None, help="default: all 1,319 problems")
  ap.add_argument("--max-new-tokens", type=int, default=256)
  ap.add_argument("--batch-size", type=int, default=64)
  ap.add_argument("--no-metrics", action="store_true", help="skip ROUGE-1 and perplexity")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)

  from jaxslm.checkpoint import save_params
  from jaxslm.data import gsm8k
  from jaxslm.evaluation import EvalOptions, evaluate_gsm8k
  from jaxslm.models import ModelConfig, init_params
  from jaxslm.tokenizers import get_tokenizer

  split = gsm8k.load("test", path=args.data)
  problems, _ = gsm8k.select(split.examples, args.limit)
  ckpt = args.checkpoint
  if ckpt is None:
    tok = get_tokenizer("r50k_base")
    cfg = ModelConfig.preset(args.preset, dtype=args.dtype, vocab_size=tok.vocab_size)
    params = init_params(cfg, jax.random.PRNGKey(0))
    ckpt = save_params(os.path.join(tempfile.mkdtemp(), "model"), params,
                       {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  opts = EvalOptions(template="qa", max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, rouge=not args.no_metrics,
                     perplexity=not args.no_metrics)
  t0 = time.perf_counter()
  result = evaluate_gsm8k(ckpt, problems, opts, log=lambda s: print(s, flush=True))
  wall = time.perf_counter() - t0
  s = result.summary
  out = {
      "command": "python benchmarks/eval_gsm8k.py " + " ".join(argv),
      "date": datetime.date.today().isoformat(), "jax": jax.__version__,
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
      "checkpoint": args.checkpoint or f"random {args.preset} ({args.dtype})",
      "problems": len(problems), "max_new_tokens": args.max_new_tokens,
      "batch_size": args.batch_size, "wall_s": wall,
      "generate_s": s["timing"]["generate_s"], "metrics_s": s["timing"]["metrics_s"],
      "new_tokens": s["efficiency"]["new_tokens"],
      "tokens_per_s": s["efficiency"]["tokens_per_s"],
      "ms_per_token": s["efficiency"]["ms_per_token"],
      "problems_per_min": s["efficiency"]["problems_per_min"],
      "peak_device_memory_bytes": s["efficiency"]["peak_device_memory_bytes"],
      "peak_host_rss_bytes": s["efficiency"]["peak_host_rss_bytes"],
      "accuracy": s["accuracy"]["mean"], "finish_reasons": s["finish_reasons"],
  }
  print(json.dumps(out, indent=2))
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(out, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
