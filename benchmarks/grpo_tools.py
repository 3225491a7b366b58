"""GRPO with tools inside the rollout: none, the calculator, the agent loop. Same base, same steps, seeds.

  python benchmarks/grpo_tools.py --base runs/base4k --pretrain-steps 4000 \
      --workdir runs/grpo_tools --seeds 0 1 2 --steps 60 \
      --out benchmarks/results/grpo_tools_cpu.json

1. Base: `--base` (pretrained with configs/default.py for `--pretrain-steps`
   steps when it has no checkpoint yet), the base of benchmarks/grpo_learning.py.
2. Warm start, once per tool mode, each from the same base with the configs a
   user runs: configs/sft_synthetic.py (<reasoning>/<solution> text),
   configs/sft_synthetic_calculator.py (the same solutions with their
   `<<expr=value>>` calls) and configs/sft_synthetic_agent.py (thought / action
   / observation traces).
3. GRPO from each warm start with configs/grpo_synthetic.py,
   grpo_synthetic_calculator.py and grpo_synthetic_agent.py, once per seed, the
   same number of steps for every mode.
4. Every run scores the same held-out synthetic problems (indices from
   1,000,000 on, never trained on) greedily at step 0 (the warm start) and every
   `--eval-every` steps: in the run's own tool mode and without tools.

Reported per mode: held-out accuracy in mode and without tools, before and
after (mean ± standard error over seeds; the change is paired per seed), the
training completions/s, tool calls and cut episodes; a chart of held-out
accuracy against step (`--chart`, beside the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "configs")
MODES = {   # tool mode: (warm-start config, GRPO config)
    "none": ("sft_synthetic.py", "grpo_synthetic.py"),
    "calculator": ("sft_synthetic_calculator.py", "grpo_synthetic_calculator.py"),
    "agent": ("sft_synthetic_agent.py", "grpo_synthetic_agent.py"),
}


def warm_start(args, mode: str) -> str:
  """Full SFT of the base in `mode`'s format (run once, reused)."""
  from jaxslm import checkpoint as ckpt
  from jaxslm.config import load_config
  from jaxslm.train import finetune
  workdir = os.path.join(args.workdir, f"sft_{mode}")
  try:
    ckpt.resolve_step_dir(workdir)
    if os.path.isdir(os.path.join(workdir, "export")):
      print(f"Warm start ({mode}): reusing {workdir}", flush=True)
      return workdir
  except FileNotFoundError:
    pass
  c = load_config(os.path.join(CONFIGS, MODES[mode][0]))
  c.init_from = args.base
  c.data.synthetic_max_steps = args.max_steps
  c.train.update(steps=args.sft_steps, eval_every=args.sft_steps,
                 checkpoint_every=args.sft_steps, log_every=50)
  c.eval.problems = 0   # GRPO's step-0 evaluation measures the warm start
  t0 = time.perf_counter()
  finetune.run(c, workdir, resume=os.path.isdir(os.path.join(workdir, "checkpoints")))
  print(f"Warm start ({mode}): {args.sft_steps} SFT steps in {time.perf_counter() - t0:.0f} s",
        flush=True)
  return workdir


def grpo_run(args, mode: str, sft: str, seed: int) -> dict:
  from jaxslm.config import load_config, set_field
  from jaxslm.train import grpo
  c = load_config(os.path.join(CONFIGS, MODES[mode][1]))
  c.init_from = sft
  c.data.synthetic_max_steps = args.max_steps
  c.eval.update(problems=args.eval_problems, every=args.eval_every)
  c.train.update(seed=seed, steps=args.steps, checkpoint_every=args.steps)
  for item in args.set:
    field, _, value = item.partition("=")
    set_field(c, field, value)
  workdir = os.path.join(args.workdir, f"grpo_{mode}_seed{seed}")
  t0 = time.perf_counter()
  out = grpo.run(c, workdir, resume=os.path.isdir(os.path.join(workdir, "checkpoints")))
  wall = time.perf_counter() - t0
  recs = out["records"]
  train = [r for r in recs if "reward_mean" in r]
  evals = [r for r in recs if "eval_accuracy" in r]
  first, last = out["summary"]["first_eval"], out["summary"]["last_eval"]

  def none_acc(r):   # for mode none the in-mode evaluation is the no-tool one
    return r.get("eval_none_accuracy", r["eval_accuracy"])
  run = {
      "mode": mode, "seed": seed, "wall_s": wall,
      "before": {"accuracy": first["eval_accuracy"], "none_accuracy": none_acc(first),
                 "reward": first["eval_reward"]},
      "after": {"accuracy": last["eval_accuracy"], "none_accuracy": none_acc(last),
                "reward": last["eval_reward"]},
      "curve": [{"step": r["step"], "accuracy": r["eval_accuracy"],
                 "none_accuracy": none_acc(r)} for r in evals],
      "completions_per_s": float(np.median([r["completions_per_s"] for r in train])),
      "step_s": float(np.median([r["sample_s"] + r["learn_s"] for r in train])),
      "train_accuracy_first10": float(np.mean([r["accuracy"] for r in train[:10]])),
      "train_accuracy_last10": float(np.mean([r["accuracy"] for r in train[-10:]])),
      "completion_len": float(np.mean([r["completion_len"] for r in train])),
  }
  for key in ("tool_calls", "tool_tokens", "tool_cut", "budget_cut"):
    if key in train[0]:
      run[key] = float(np.mean([r[key] for r in train]))
  print(f"{mode} seed {seed}: held-out accuracy {run['before']['accuracy']:.3f} -> "
        f"{run['after']['accuracy']:.3f} in mode, {run['before']['none_accuracy']:.3f} -> "
        f"{run['after']['none_accuracy']:.3f} without tools; "
        f"{run['completions_per_s']:.1f} completions/s ({wall:.0f} s)", flush=True)
  return run


def summarize(runs: list[dict]) -> dict:
  from jaxslm.evaluation.stats import mean_stderr
  out = {}
  for mode in dict.fromkeys(r["mode"] for r in runs):
    rs = [r for r in runs if r["mode"] == mode]
    m = {"seeds": [r["seed"] for r in rs],
         "completions_per_s": mean_stderr([r["completions_per_s"] for r in rs])}
    for key in ("accuracy", "none_accuracy", "reward"):
      m[f"{key}_before"] = rs[0]["before"][key]   # the same warm start for every seed
      m[f"{key}_after"] = mean_stderr([r["after"][key] for r in rs])
      m[f"{key}_change"] = mean_stderr([r["after"][key] - r["before"][key] for r in rs])
    out[mode] = m
  return out


def chart(runs: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.2))
  colors = {"none": "tab:gray", "calculator": "tab:blue", "agent": "tab:orange"}
  for mode in dict.fromkeys(r["mode"] for r in runs):
    rs = [r for r in runs if r["mode"] == mode]
    steps = [p["step"] for p in rs[0]["curve"]]
    for key, style, label in (("accuracy", "-", "in mode"), ("none_accuracy", "--", "no tools")):
      if mode == "none" and key == "none_accuracy":
        continue
      ys = np.array([[p[key] for p in r["curve"]] for r in rs])
      mean = ys.mean(0)
      err = ys.std(0, ddof=1) / np.sqrt(len(rs)) if len(rs) > 1 else np.zeros_like(mean)
      ax.errorbar(steps, mean, yerr=err, fmt="o" + style, color=colors.get(mode), capsize=3,
                  label=f"{mode}, {label}" if mode != "none" else "none")
  ax.set_xlabel("GRPO step")
  ax.set_ylabel("held-out accuracy (greedy)")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f"GRPO with tools: mean ± stderr over {len(rs)} seeds")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--base", default="runs/base4k", help="pretrained checkpoint to warm-start")
  ap.add_argument("--pretrain-steps", type=int, default=0,
                  help="pretrain --base with configs/default.py for this many steps when it has "
                       "no checkpoint yet")
  ap.add_argument("--workdir", default="runs/grpo_tools")
  ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
  ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  ap.add_argument("--steps", type=int, default=60, help="GRPO steps per run")
  ap.add_argument("--sft-steps", type=int, default=150)
  ap.add_argument("--max-steps", type=int, default=2, help="reasoning steps per problem, at most")
  ap.add_argument("--eval-problems", type=int, default=200)
  ap.add_argument("--eval-every", type=int, default=20)
  ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                  help="GRPO config override for every mode, e.g. --set grpo.G=8")
  ap.add_argument("--out", default="benchmarks/results/grpo_tools_cpu.json")
  ap.add_argument("--chart", default="", help="chart path (default: --out with .png)")
  args = ap.parse_args(argv)

  import jax
  sys.path.insert(0, HERE)
  from grpo_learning import pretrain_base
  pretrain_base(args)
  sfts = {mode: warm_start(args, mode) for mode in args.modes}
  runs = []
  for seed in args.seeds:      # every mode per seed first: a cut-short study stays paired
    for mode in args.modes:
      runs.append(grpo_run(args, mode, sfts[mode], seed))
      partial = {"runs": runs, "partial": True}
      with open(args.out + ".partial", "w") as f:
        json.dump(partial, f, indent=2)
  modes = summarize(runs)
  result = {
      "command": " ".join(["python", "benchmarks/grpo_tools.py", *(argv or sys.argv[1:])]),
      "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
      "device": jax.devices()[0].device_kind,
      "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
      "settings": vars(args), "modes": modes, "runs": runs,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  if os.path.exists(args.out + ".partial"):
    os.remove(args.out + ".partial")
  png = args.chart or os.path.splitext(args.out)[0] + ".png"
  chart(runs, png)
  print()
  for mode, m in modes.items():
    a, n = m["accuracy_after"], m["none_accuracy_after"]
    print(f"{mode:10s} in mode {m['accuracy_before']:.3f} -> {a[0]:.3f} ± {a[1]:.3f} "
          f"(change {m['accuracy_change'][0]:+.3f} ± {m['accuracy_change'][1]:.3f}); "
          f"no tools {m['none_accuracy_before']:.3f} -> {n[0]:.3f} ± {n[1]:.3f}; "
          f"{m['completions_per_s'][0]:.1f} completions/s")
  print(f"wrote {args.out} and {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
