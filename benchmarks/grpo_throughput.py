"""GRPO throughput of jaxslm (completions/s, step time split into sampling and
learning), the side to compare with benchmarks/grpo_trl.py (TRL's GRPOTrainer).

    TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache \\
        python benchmarks/grpo_model.py --preset slm26m --out runs/bench_grpo_model
    python benchmarks/grpo_throughput.py --model-dir runs/bench_grpo_model \\
        --prompts-per-step 4 --G 4 --max-prompt-tokens 64 --max-new-tokens 64 --steps 4 \\
        --out benchmarks/results/grpo_jaxslm_cpu.json

The same settings as the TRL side: the Hugging Face directory written by
grpo_model.py converted with `jaxslm.convert.hf_to_jaxslm` (identical weights),
full-parameter GRPO (TRL's default), P prompts x G completions per step,
"Question: {q}\\nAnswer:" prompts of synthetic problems left-truncated to
--max-prompt-tokens, temperature 1.0 for every completion, no top-k/top-p,
beta 0.04 (so the reference pass runs) with a constant beta, μ = 1, AdamW with
clipping 1.0, fp32, and the same stand-in reward (characters / 100). It runs
`jaxslm.train.grpo.run` itself: sampling, rewards, advantages, the reference
pass and the jitted step, logging included. The first step (compilation) is
excluded from the medians. Completion lengths are reported: a random-init
model almost never writes EOS, so completions run to --max-new-tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

import numpy as np


def length_reward(prompts, completions, answers):
  """The benchmarks' stand-in reward: characters of the completion / 100."""
  return [len(c) / 100.0 for c in completions]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model-dir", default="runs/bench_grpo_model")
  ap.add_argument("--prompts-per-step", type=int, default=4)
  ap.add_argument("--G", type=int, default=4)
  ap.add_argument("--max-prompt-tokens", type=int, default=64)
  ap.add_argument("--max-new-tokens", type=int, default=64)
  ap.add_argument("--steps", type=int, default=4)
  ap.add_argument("--method", default="full", choices=("full", "lora"))
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--workdir", default="runs/bench_grpo_jaxslm")
  ap.add_argument("--out", default="benchmarks/results/grpo_jaxslm_cpu.json")
  args = ap.parse_args(argv)

  import jax
  from jaxslm import convert
  from jaxslm.config import grpo_config
  from jaxslm.train import grpo
  ckpt_dir = os.path.join(args.workdir, "model")
  if not os.path.isdir(ckpt_dir):
    convert.hf_to_jaxslm(args.model_dir, ckpt_dir, dtype="float32")
  run_dir = os.path.join(args.workdir, "run")
  shutil.rmtree(run_dir, ignore_errors=True)
  c = grpo_config(args.method)
  c.init_from, c.model_dtype = ckpt_dir, args.dtype
  c.data.update(source="synthetic", template="qa", train_problems=256,
                prompt_budget=args.max_prompt_tokens, too_long="truncate")
  c.grpo.update(G=args.G, temperatures=(1.0,), prompts_per_step=args.prompts_per_step,
                max_new_tokens=args.max_new_tokens, mu=1, beta=0.04, kl_target=0.0,
                ref_update_every=0)
  c.rewards.update(names=("__main__:length_reward",) if __name__ == "__main__"
                   else (f"{__name__}:length_reward",), weights=(1.0,))
  c.train.update(steps=args.steps, lr=1e-6, checkpoint_every=10**6, log_every=1)
  c.eval.update(problems=0, every=0)
  t0 = time.perf_counter()
  out = grpo.run(c, run_dir)
  wall = time.perf_counter() - t0
  recs = out["records"]
  steady = recs[1:] or recs
  step_s = [r["sample_s"] + r["learn_s"] for r in steady]
  rows = args.prompts_per_step * args.G
  result = {
      "command": " ".join(["python", "benchmarks/grpo_throughput.py", *(argv or sys.argv[1:])]),
      "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
      "settings": vars(args),
      "steps": [{k: r[k] for k in ("step", "sample_s", "learn_s", "completion_len",
                                   "completions_per_s")} for r in recs],
      "first_step_s": recs[0]["sample_s"] + recs[0]["learn_s"],
      "median_step_s": float(np.median(step_s)),
      "median_sample_s": float(np.median([r["sample_s"] for r in steady])),
      "median_learn_s": float(np.median([r["learn_s"] for r in steady])),
      "completions_per_s": rows / float(np.median(step_s)),
      "mean_completion_tokens": float(np.mean([r["completion_len"] for r in steady])),
      "params": out["counts"], "wall_s": wall,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("median_step_s", "median_sample_s", "median_learn_s",
                                           "completions_per_s", "mean_completion_tokens",
                                           "first_step_s")}, indent=2))
  return 0


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


if __name__ == "__main__":
  sys.exit(main())
