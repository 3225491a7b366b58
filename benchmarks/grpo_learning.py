"""Does GRPO make the model better? Warm start, GRPO over several seeds, held-out before/after.

  python launch/pretrain.py --workdir runs/default          # the offline default model, if absent
  python benchmarks/grpo_learning.py --base runs/default --seeds 0 1 2 --steps 60 \
      --workdir runs/grpo_learning --out benchmarks/results/grpo_learning_cpu.json

1. Warm start: a short full SFT of `--base` on synthetic problems (indices
   0..N-1, at most `--max-steps` reasoning steps) in the <reasoning>/<solution>
   format (`jaxslm.train.finetune`, template "structured"), run once.
2. GRPO from it with configs/grpo_synthetic.py, once per seed (the seed picks
   the prompts, the sampling and the adapters' initialization).
3. Each run scores the same held-out synthetic problems (indices from
   1,000,000 on, never trained on) greedily before and after: accuracy and
   mean reward (0.2 format + 0.3 process + 0.5 accuracy). With --eval-samples k,
   also pass@1 at --eval-temperature over k samples per problem, drawn with
   the same seeds before and after.

Reported: the held-out accuracy and reward before (the warm start), after each
seed, and the change as mean ± standard error over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def write_synthetic(path: str, n: int, max_steps: int) -> str:
  from jaxslm.data.synthetic import SyntheticMath
  gen = SyntheticMath(0, max_steps=max_steps)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for i in range(n):
      p = gen.problem(i)
      f.write(json.dumps({"question": p.question, "answer": p.answer}) + "\n")
  os.replace(tmp, path)
  return path


def pretrain_base(args) -> None:
  """Pretrain `--base` with configs/default.py for `--pretrain-steps` steps, unless it exists."""
  from jaxslm import checkpoint as ckpt
  from jaxslm.config import load_config
  from jaxslm.train import pretrain
  try:
    ckpt.resolve_step_dir(args.base)
    print(f"Base: reusing {args.base}")
    return
  except FileNotFoundError:
    if not args.pretrain_steps:
      raise SystemExit(f"--base {args.base} has no checkpoint: pretrain it first "
                       "(python launch/pretrain.py --workdir {args.base}) or pass --pretrain-steps N")
  c = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "default.py"))
  c.data.synthetic_documents = max(c.data.synthetic_documents, args.pretrain_steps * 16)
  c.train.update(steps=args.pretrain_steps, checkpoint_every=args.pretrain_steps,
                 eval_every=args.pretrain_steps, log_every=100)
  t0 = time.perf_counter()
  pretrain.run(c, args.base)
  print(f"Base: {args.pretrain_steps} pretraining steps in {time.perf_counter() - t0:.0f} s")


def warm_start(args) -> str:
  from jaxslm import checkpoint as ckpt
  from jaxslm.config import finetune_config
  from jaxslm.train import finetune
  workdir = os.path.join(args.workdir, "sft")
  try:
    ckpt.resolve_step_dir(workdir)
    if os.path.isdir(os.path.join(workdir, "export")):
      print(f"Warm start: reusing {workdir}")
      return workdir
  except FileNotFoundError:
    pass
  os.makedirs(args.workdir, exist_ok=True)
  data = write_synthetic(os.path.join(args.workdir, "synthetic_train.jsonl"), args.sft_problems,
                         args.max_steps)
  c = finetune_config("full")
  c.init_from = args.base
  c.data.update(path=data, template="structured", val_examples=100)
  c.train.update(steps=args.sft_steps, batch_size=16, seq_len=192, lr=1e-3, min_lr=1e-4,
                 warmup_steps=15, log_every=50, eval_every=args.sft_steps,
                 checkpoint_every=args.sft_steps)
  c.eval.problems = 0
  t0 = time.perf_counter()
  finetune.run(c, workdir)
  print(f"Warm start: {args.sft_steps} SFT steps in {time.perf_counter() - t0:.0f} s")
  return workdir


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--base", default="runs/default", help="pretrained checkpoint to warm-start")
  ap.add_argument("--pretrain-steps", type=int, default=0,
                  help="pretrain --base with configs/default.py for this many steps when it has "
                       "no checkpoint yet")
  ap.add_argument("--workdir", default="runs/grpo_learning")
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--steps", type=int, default=60, help="GRPO steps per seed")
  ap.add_argument("--sft-steps", type=int, default=150)
  ap.add_argument("--sft-problems", type=int, default=3000)
  ap.add_argument("--max-steps", type=int, default=2, help="reasoning steps per problem, at most")
  ap.add_argument("--eval-problems", type=int, default=200)
  ap.add_argument("--eval-samples", type=int, default=0,
                  help="also score pass@1 over this many sampled completions per held-out "
                       "problem (at --eval-temperature; the same draws before and after)")
  ap.add_argument("--eval-temperature", type=float, default=1.0)
  ap.add_argument("--max-new-tokens", type=int, default=96)
  ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                  help="extra GRPO config override, e.g. --set train.lr=1e-3")
  ap.add_argument("--out", default="benchmarks/results/grpo_learning_cpu.json")
  args = ap.parse_args(argv)

  import jax
  from jaxslm.config import load_config, set_field
  from jaxslm.evaluation.stats import mean_stderr
  from jaxslm.train import grpo
  pretrain_base(args)
  sft = warm_start(args)
  runs = []
  for seed in args.seeds:
    c = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "grpo_synthetic.py"))
    c.init_from = sft
    c.data.synthetic_max_steps = args.max_steps
    c.grpo.max_new_tokens = c.eval.max_new_tokens = args.max_new_tokens
    c.eval.update(problems=args.eval_problems, every=args.steps, samples=args.eval_samples,
                  temperature=args.eval_temperature)
    c.train.update(seed=seed, steps=args.steps, checkpoint_every=args.steps)
    for item in args.set:
      field, _, value = item.partition("=")
      set_field(c, field, value)
    workdir = os.path.join(args.workdir, f"grpo_seed{seed}")
    t0 = time.perf_counter()
    out = grpo.run(c, workdir, resume=os.path.isdir(os.path.join(workdir, "checkpoints")))
    wall = time.perf_counter() - t0
    s = out["summary"]
    recs = [r for r in out["records"] if "reward_mean" in r]
    runs.append({"seed": seed, "before": s["first_eval"], "after": s["last_eval"], "wall_s": wall,
                 "train_reward_first10": float(np.mean([r["reward_mean"] for r in recs[:10]])),
                 "train_reward_last10": float(np.mean([r["reward_mean"] for r in recs[-10:]])),
                 "step_s": float(np.median([r["sample_s"] + r["learn_s"] for r in recs])),
                 "completions_per_s": float(np.median([r["completions_per_s"] for r in recs]))})
    if args.eval_samples:
      print(f"seed {seed}: held-out sampled pass@1 {s['first_eval']['eval_sampled_accuracy']:.3f} "
            f"-> {s['last_eval']['eval_sampled_accuracy']:.3f}", flush=True)
    print(f"seed {seed}: held-out accuracy {s['first_eval']['eval_accuracy']:.3f} -> "
          f"{s['last_eval']['eval_accuracy']:.3f}, reward {s['first_eval']['eval_reward']:.3f} -> "
          f"{s['last_eval']['eval_reward']:.3f} ({wall:.0f} s)", flush=True)

  def agg(key, when):
    return mean_stderr([r[when][key] for r in runs])

  def delta(key):
    return mean_stderr([r["after"][key] - r["before"][key] for r in runs])
  result = {
      "command": " ".join(["python", "benchmarks/grpo_learning.py", *(argv or sys.argv[1:])]),
      "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "device": jax.devices()[0].device_kind,
      "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
      "settings": vars(args), "runs": runs,
      "accuracy_before": runs[0]["before"]["eval_accuracy"],
      "accuracy_after": agg("eval_accuracy", "after"), "accuracy_change": delta("eval_accuracy"),
      "reward_before": runs[0]["before"]["eval_reward"],
      "reward_after": agg("eval_reward", "after"), "reward_change": delta("eval_reward"),
  }
  if args.eval_samples:
    result.update(
        sampled_accuracy_before=runs[0]["before"]["eval_sampled_accuracy"],
        sampled_accuracy_after=agg("eval_sampled_accuracy", "after"),
        sampled_accuracy_change=delta("eval_sampled_accuracy"),
        sampled_reward_before=runs[0]["before"]["eval_sampled_reward"],
        sampled_reward_after=agg("eval_sampled_reward", "after"),
        sampled_reward_change=delta("eval_sampled_reward"))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  a, r = result["accuracy_change"], result["reward_change"]
  print(f"\nheld-out accuracy {result['accuracy_before']:.3f} -> "
        f"{result['accuracy_after'][0]:.3f} ± {result['accuracy_after'][1]:.3f}; change "
        f"{a[0]:+.3f} ± {a[1]:.3f} over {len(runs)} seeds")
  print(f"held-out reward   {result['reward_before']:.3f} -> {result['reward_after'][0]:.3f} ± "
        f"{result['reward_after'][1]:.3f}; change {r[0]:+.3f} ± {r[1]:.3f}")
  if args.eval_samples:
    a, r = result["sampled_accuracy_change"], result["sampled_reward_change"]
    print(f"held-out pass@1 at T={args.eval_temperature} ({args.eval_samples} samples): "
          f"{result['sampled_accuracy_before']:.3f} -> {result['sampled_accuracy_after'][0]:.3f}; "
          f"change {a[0]:+.3f} ± {a[1]:.3f}; its reward change {r[0]:+.3f} ± {r[1]:.3f}")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
