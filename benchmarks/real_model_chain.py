"""Does a real pretrained model learn math through jaxslm? Import, measure, LoRA SFT, GRPO, measure.

  ../shared/tools/fetch-gguf.sh models/gguf
  python benchmarks/real_model_chain.py --gguf models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
      --data ../shared/data/gsm8k --workdir runs/real_chain --sft-steps 300 --sft-lr 5e-4 \
      --grpo-steps 25 --eval-problems 500 --out benchmarks/results/real_chain_cpu.json \
      --set grpo.grad_accum=4 --set grpo.prompts_per_step=8 --set grpo.G=8 \
      --set "grpo.temperatures=(0.6,0.6,0.8,0.8,1.0,1.0,1.2,1.2)" \
      --set grpo.max_new_tokens=160 --set train.lr=1e-3 --set grpo.beta=0.0

(the run in BENCHMARKS.md: about 1.8 hours on a 2-core CPU, 79 minutes of it training; `grpo.grad_accum` keeps
the learning pass of a 49k-vocabulary model within a laptop's memory.)

The chain, each stage run once and reused when its workdir is complete:

1. base: the GGUF file imported (`gguf2jax`, float32), or `--checkpoint`.
2. sft: LoRA (configs/sft_gsm8k_lora.py: r 8, alpha 16, q and v) on GSM8K train
   in the `--template` format (default "structured": <reasoning>/<solution>,
   the format GRPO's rewards score), `--sft-steps` steps of `--batch-size` rows.
3. grpo: LoRA GRPO (configs/grpo_synthetic.py's settings: the format + process +
   accuracy rewards) from the better of base and sft on held-out GSM8K
   (its merged export/), on `--grpo-data` (synthetic problems or GSM8K train).

Every stage is scored greedily on the same problems: a fixed subset of GSM8K
test (`--eval-problems`, subset seed 1234) and held-out synthetic problems
(indices from 1,000,000 on, never trained on), zero-shot in the template.
Reported: accuracy ± stderr per stage, and each stage against the one before
and against the base with McNemar's exact test and the paired bootstrap
(`jaxslm.evaluation.stats`) on the per-problem outcomes, strict (the answer in
<solution>) and flexible (the last number written). The JSON is written
after every stage, and a chart of accuracy per stage beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "configs")
HELDOUT_START = 1_000_000
# The settings a stage's scores depend on (besides the checkpoint).
SCORING = ("data", "template", "max_steps", "eval_problems", "synthetic_problems",
           "max_new_tokens", "eval_batch_size")


def _complete(workdir: str) -> bool:
  return os.path.isdir(os.path.join(workdir, "export"))


def import_base(args) -> str:
  if args.checkpoint:
    return args.checkpoint
  out = os.path.join(args.workdir, "base")
  if os.path.isdir(out):
    print(f"base: reusing {out}", flush=True)
    return out
  from jaxslm.convert import gguf
  t0 = time.perf_counter()
  gguf.gguf_to_jaxslm(args.gguf, out, dtype="float32")
  print(f"base: imported {args.gguf} in {time.perf_counter() - t0:.0f} s", flush=True)
  return out


def gsm8k_subset(args):
  from jaxslm.data import gsm8k
  split = gsm8k.load("test", path=args.data)
  problems, note = gsm8k.select(split.examples, limit=args.eval_problems, seed=1234)
  if note:
    print(note, flush=True)
  return problems


def synthetic_heldout(args):
  from jaxslm.data.gsm8k import Example
  from jaxslm.data.synthetic import SyntheticMath
  gen = SyntheticMath(0, max_steps=args.max_steps)
  return [Example(HELDOUT_START + i, p.question, p.answer, str(p.final_answer))
          for i, p in ((i, gen.problem(HELDOUT_START + i)) for i in range(args.synthetic_problems))]


def score(model_path: str, problems, args, what: str) -> dict:
  from jaxslm.evaluation.gsm8k import EvalOptions, evaluate_gsm8k
  opts = EvalOptions(mode="zero-shot", template=args.template, max_new_tokens=args.max_new_tokens,
                     batch_size=args.eval_batch_size, rouge=False, perplexity=False,
                     similarity=None)
  t0 = time.perf_counter()
  res = evaluate_gsm8k(model_path, problems, opts)
  acc = res.summary["accuracy"]
  flexible = [bool(r["extractors"].get("flexible-extract")) for r in res.records]
  out = {"accuracy": acc["mean"], "stderr": acc["stderr"], "n": len(res.records),
         "flexible_accuracy": sum(flexible) / len(flexible),
         "correct": [bool(r["correct"]) for r in res.records],
         "flexible_correct": flexible, "seconds": time.perf_counter() - t0}
  print(f"  {what}: {100 * out['accuracy']:.1f}% ± {100 * out['stderr']:.1f} "
        f"(flexible {100 * out['flexible_accuracy']:.1f}%) on {out['n']} problems "
        f"in {out['seconds']:.0f} s", flush=True)
  return out


def sft(args, base: str) -> str:
  from jaxslm.config import load_config
  from jaxslm.train import finetune
  workdir = os.path.join(args.workdir, "sft")
  if _complete(workdir):
    print(f"sft: reusing {workdir}", flush=True)
    return workdir
  c = load_config(os.path.join(CONFIGS, "sft_gsm8k_lora.py"))
  c.init_from = base
  c.model_dtype = args.dtype
  c.data.update(path=args.data, template=args.template, val_examples=100)
  c.train.update(steps=args.sft_steps, batch_size=args.batch_size, seq_len=args.seq_len,
                 warmup_steps=max(1, args.sft_steps // 10), eval_every=args.sft_steps,
                 checkpoint_every=max(1, min(100, args.sft_steps)), log_every=10)
  if args.sft_lr is not None:
    c.train.update(lr=args.sft_lr, min_lr=args.sft_lr / 10)
  c.eval.problems = 0   # the chain scores every stage itself, on the same problems
  t0 = time.perf_counter()
  finetune.run(c, workdir, resume=os.path.isdir(os.path.join(workdir, "checkpoints")))
  print(f"sft: {args.sft_steps} LoRA steps in {time.perf_counter() - t0:.0f} s", flush=True)
  return workdir


def grpo(args, start: str) -> str:
  from jaxslm.config import load_config, set_field
  from jaxslm.train import grpo as grpo_train
  workdir = os.path.join(args.workdir, "grpo")
  if _complete(workdir):
    print(f"grpo: reusing {workdir}", flush=True)
    return workdir
  c = load_config(os.path.join(CONFIGS, "grpo_synthetic.py"))
  c.init_from = start
  c.model_dtype = args.dtype
  if args.grpo_data == "gsm8k":
    c.data.update(source="gsm8k", path=args.data, train_problems=0, prompt_budget=256)
  else:
    c.data.update(synthetic_max_steps=args.max_steps)
  c.data.template = args.template
  c.grpo.update(max_new_tokens=args.max_new_tokens)
  c.train.update(steps=args.grpo_steps, checkpoint_every=max(1, min(20, args.grpo_steps)))
  c.eval.update(problems=0, every=0)
  for item in args.set:
    field, _, value = item.partition("=")
    set_field(c, field, value)
  t0 = time.perf_counter()
  grpo_train.run(c, workdir, resume=os.path.isdir(os.path.join(workdir, "checkpoints")))
  print(f"grpo: {args.grpo_steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
  return workdir


def earlier_scores(args, problems: dict) -> dict:
  """The stages of an earlier run's JSON at --out whose scores can be reused: the
  same scoring settings, and per problem set one outcome per problem. Anything
  else (no file, a file that is not such a JSON, other settings) is said and
  scored again; the file is rewritten either way."""
  if not os.path.isfile(args.out):
    return {}
  try:
    with open(args.out) as f:
      before = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    print(f"{args.out}: not readable as an earlier chain's results ({e}); scoring every "
          "stage again", flush=True)
    return {}
  settings = before.get("settings") if isinstance(before, dict) else None
  stages = before.get("stages") if isinstance(before, dict) else None
  if not isinstance(settings, dict) or not isinstance(stages, dict):
    print(f"{args.out}: not an earlier chain's results (no settings and stages); scoring every "
          "stage again", flush=True)
    return {}
  if any(settings.get(k) != getattr(args, k) for k in SCORING):
    print(f"{args.out}: an earlier chain with other scoring settings; scoring every stage "
          "again", flush=True)
    return {}

  def usable(stage) -> bool:
    return isinstance(stage, dict) and isinstance(stage.get("path"), str) and all(
        isinstance(stage.get(k), dict)
        and all(isinstance(stage[k].get(c), list) and len(stage[k][c]) == len(p)
                and all(isinstance(x, bool) for x in stage[k][c])
                for c in ("correct", "flexible_correct"))
        and isinstance(stage[k].get("accuracy"), (int, float))
        and abs(stage[k]["accuracy"] - sum(stage[k]["correct"]) / max(len(p), 1)) < 1e-9
        for k, p in problems.items())
  bad = [name for name, stage in stages.items() if not usable(stage)]
  if bad:
    print(f"{args.out}: stage(s) {', '.join(map(str, bad))} without one outcome per problem; "
          "scoring them again", flush=True)
  return {name: stage for name, stage in stages.items() if name not in bad}


def compare(a: dict, b: dict, key: str = "correct") -> dict:
  """b against a on the same problems: McNemar's exact test and the paired bootstrap,
  on the strict outcomes (`correct`) or the flexible ones (`flexible_correct`)."""
  from jaxslm.evaluation import stats
  return {"change": (sum(b[key]) - sum(a[key])) / len(a[key]),
          "mcnemar": stats.mcnemar_exact(a[key], b[key]),
          "bootstrap": stats.paired_bootstrap([float(x) for x in b[key]],
                                              [float(x) for x in a[key]], seed=0)}


def chart(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  stages = list(result["stages"])
  fig, ax = plt.subplots(figsize=(6, 4))
  width = 0.38
  for k, (key, label) in enumerate((("gsm8k", "GSM8K test"), ("synthetic", "synthetic held-out"))):
    ys = [100 * result["stages"][s][key]["accuracy"] for s in stages]
    es = [100 * result["stages"][s][key]["stderr"] for s in stages]
    ax.bar([i + (k - 0.5) * width for i in range(len(stages))], ys, width, yerr=es, capsize=4,
           label=label)
  ax.set_xticks(range(len(stages)), stages)
  ax.set_ylabel("greedy accuracy, % (± stderr)")
  ax.set_title(result["model"])
  ax.legend()
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--gguf", help="a GGUF file to import (llama, gemma3, qwen2/3, phi3)")
  src.add_argument("--checkpoint", help="an already imported or converted checkpoint")
  ap.add_argument("--data", required=True, help="local GSM8K directory (train/test .jsonl)")
  ap.add_argument("--workdir", default="runs/real_chain")
  ap.add_argument("--template", default="structured")
  ap.add_argument("--dtype", default="float32", help="compute dtype of training")
  ap.add_argument("--sft-steps", type=int, default=400)
  ap.add_argument("--sft-lr", type=float, default=None,
                  help="peak LR of the SFT stage (default: the config's, 2e-4)")
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--seq-len", type=int, default=384)
  ap.add_argument("--grpo-steps", type=int, default=60)
  ap.add_argument("--grpo-data", choices=("synthetic", "gsm8k"), default="synthetic")
  ap.add_argument("--max-steps", type=int, default=2, help="synthetic: reasoning steps, at most")
  ap.add_argument("--eval-problems", type=int, default=500, help="GSM8K test subset size")
  ap.add_argument("--synthetic-problems", type=int, default=200)
  ap.add_argument("--max-new-tokens", type=int, default=256)
  ap.add_argument("--eval-batch-size", type=int, default=16)
  ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                  help="GRPO config override, e.g. --set grpo.G=8")
  ap.add_argument("--out", default="benchmarks/results/real_chain_cpu.json")
  args = ap.parse_args(argv)

  import jax
  os.makedirs(args.workdir, exist_ok=True)
  problems = {"gsm8k": gsm8k_subset(args), "synthetic": synthetic_heldout(args)}
  result = {"command": " ".join(["python", "benchmarks/real_model_chain.py",
                                 *(argv or sys.argv[1:])]),
            "model": os.path.basename(args.gguf or args.checkpoint.rstrip("/")),
            "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
            "device": jax.devices()[0].device_kind,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "settings": vars(args), "stages": {}, "tests": {}}

  def write():
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
      json.dump(result, f, indent=2)
    os.replace(tmp, args.out)

  # Scores of an earlier run of the same chain (same --out, same scoring settings)
  # are reused stage by stage, so a chain stopped during a later stage resumes
  # without scoring again what it already scored.
  earlier = earlier_scores(args, problems)

  def measure(stage: str, path: str) -> None:
    old = earlier.get(stage)
    if old and old.get("path") == path:
      print(f"{stage}: reusing the scores in {args.out}", flush=True)
      result["stages"][stage] = old
    else:
      print(f"{stage}: scoring {path}", flush=True)
      result["stages"][stage] = {"path": path, **{k: score(path, p, args, k)
                                                  for k, p in problems.items()}}
    write()

  base = import_base(args)
  measure("base", base)
  sft_dir = sft(args, base)
  measure("sft", sft_dir)
  s = result["stages"]
  start = "sft" if s["sft"]["gsm8k"]["accuracy"] >= s["base"]["gsm8k"]["accuracy"] else "base"
  result["grpo_from"] = start
  grpo_dir = grpo(args, os.path.join(sft_dir, "export") if start == "sft" else base)
  measure("grpo", grpo_dir)
  for a, b in (("base", "sft"), (start, "grpo"), ("base", "grpo")):
    for key in problems:
      result["tests"][f"{key}: {b} vs {a}"] = compare(s[a][key], s[b][key])
      # The flexible extractor (the last number written) separates a format learned
      # from answers learned: a model that starts writing <solution> gains strict only.
      result["tests"][f"{key} (flexible): {b} vs {a}"] = compare(s[a][key], s[b][key],
                                                                 "flexible_correct")
  write()
  png = os.path.splitext(args.out)[0] + ".png"
  chart(result, png)
  print()
  for name, t in result["tests"].items():
    print(f"{name}: change {100 * t['change']:+.1f} points, McNemar p = "
          f"{t['mcnemar']['p_value']:.3g}, paired bootstrap p = {t['bootstrap']['p_value']:.3g}, "
          f"95% CI [{100 * t['bootstrap']['ci95'][0]:+.1f}, {100 * t['bootstrap']['ci95'][1]:+.1f}]")
  print(f"wrote {args.out} and {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
