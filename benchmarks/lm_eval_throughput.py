"""Loglikelihood requests/s of a multiple-choice workload: the jaxslm backend
against lm-evaluation-harness's own `hf` backend, same weights, same requests.

    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken_cache python benchmarks/grpo_model.py \\
        --preset slm26m --out runs/bench_grpo_model          # once: the shared HF directory
    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken_cache python benchmarks/lm_eval_throughput.py \\
        --hf-dir runs/bench_grpo_model --questions 128 --batch 32 \\
        --out benchmarks/results/lm_eval_cpu.json

The workload is ARC/HellaSwag-shaped: GSM8K questions (from --gsm8k, else
synthetic ones) as contexts "Question: ...\\nAnswer:", each with 4 numeric
choices (the gold answer and three distractors), so 4 requests per question;
both backends get the identical `Instance` list, batch size --batch, float32.
Each side runs the whole list once to warm up (jaxslm compiles its length
buckets; the hf backend warms its kernels), then --repeats timed runs; the
median is reported. It also reports the largest |Δ logprob| between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain_throughput as common  # noqa: E402  CpuContention, _cpu_name, write_json


def parse(argv):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--hf-dir", required=True, help="a Hugging Face model directory")
  ap.add_argument("--jaxslm-ckpt", default=None,
                  help="its jaxslm conversion (default: converted into a temp dir)")
  ap.add_argument("--gsm8k", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data", "gsm8k", "test.jsonl"))
  ap.add_argument("--questions", type=int, default=128)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--sides", default="jaxslm,hf")
  ap.add_argument("--out", default=None)
  return ap.parse_args(argv)


def workload(path: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
  rng = random.Random(seed)
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f][:n]
    items = [(r["question"], int(float(r["answer"].split("####")[-1].replace(",", ""))))
             for r in rows]
  else:
    items = []
    for _ in range(n):
      a, b = rng.randint(2, 99), rng.randint(2, 99)
      items.append((f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                    a + b))
  pairs = []
  for q, gold in items:
    choices = {gold}
    while len(choices) < 4:
      choices.add(gold + rng.choice([-1, 1]) * rng.randint(1, max(3, abs(gold) // 2 + 1)))
    pairs += [(f"Question: {q}\nAnswer:", f" {c}") for c in sorted(choices)]
  return pairs


def time_side(lm, reqs, repeats: int) -> dict:
  lm.loglikelihood(reqs)                         # warm-up: compilation / kernels
  times, out = [], None
  contention = common.CpuContention().start()
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = lm.loglikelihood(reqs)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {"requests": len(reqs), "seconds": [round(t, 3) for t in times],
          "median_s": round(med, 3), "requests_per_s": round(len(reqs) / med, 2),
          "other_processes_cpu_cores": contention.stop(), "_out": out}


def main(argv=None) -> dict:
  args = parse(sys.argv[1:] if argv is None else argv)
  import jax
  import lm_eval
  from lm_eval.api.instance import Instance

  pairs = workload(args.gsm8k, args.questions)
  reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
  sides = [s.strip() for s in args.sides.split(",") if s.strip()]
  result = {"benchmark": "lm_eval_loglikelihood", "command": " ".join(["python", *sys.argv]),
            "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
            "lm_eval": lm_eval.__version__, "device": str(jax.devices()[0].device_kind),
            "cpu": common._cpu_name(), "batch": args.batch, "questions": args.questions,
            "requests": len(reqs), "dtype": "float32", "sides": {}}
  outs = {}
  if "jaxslm" in sides:
    from jaxslm import convert
    from jaxslm.evaluation.lm_eval_backend import JaxslmLM
    ckpt = args.jaxslm_ckpt or convert.hf_to_jaxslm(
        args.hf_dir, os.path.join(tempfile.mkdtemp(), "jax"))
    r = time_side(JaxslmLM(checkpoint=ckpt, batch_size=args.batch, dtype="float32"), reqs,
                  args.repeats)
    outs["jaxslm"] = r.pop("_out")
    result["sides"]["jaxslm"] = r
    print(f"jaxslm: {r['requests_per_s']} requests/s (median {r['median_s']} s)", flush=True)
  if "hf" in sides:
    import torch
    from lm_eval.models.huggingface import HFLM
    result["torch"] = torch.__version__
    result["torch_threads"] = torch.get_num_threads()
    r = time_side(HFLM(pretrained=args.hf_dir, dtype="float32", batch_size=args.batch,
                       device="cuda" if torch.cuda.is_available() else "cpu"), reqs, args.repeats)
    outs["hf"] = r.pop("_out")
    result["sides"]["hf"] = r
    print(f"hf: {r['requests_per_s']} requests/s (median {r['median_s']} s)", flush=True)
  if len(outs) == 2:
    a, b = outs["jaxslm"], outs["hf"]
    result["max_abs_logprob_diff"] = max(abs(x[0] - y[0]) for x, y in zip(a, b))
    result["greedy_agreement"] = sum(x[1] == y[1] for x, y in zip(a, b)) / len(a)
    result["speedup"] = round(result["sides"]["jaxslm"]["requests_per_s"]
                              / result["sides"]["hf"]["requests_per_s"], 2)
    print(f"speedup {result['speedup']}x; max |Δ logprob| {result['max_abs_logprob_diff']:.2e}")
  if args.out:
    common.write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
