"""Fine-tuning methods compared (LoRA, QLoRA, stacked LoRA, full): one base, one table.

    python launch/pretrain.py        # the base: runs/default (or any checkpoint)
    python benchmarks/finetune_methods.py --base runs/default --data ../shared/data/gsm8k \\
        --steps 150 --eval-problems 100 --out benchmarks/results/cpu_finetune_methods.json

Methods, each a real run of `launch/finetune.py` (its own process, so peak
memory is its own) from the same base on GSM8K train:

  lora      LoRA r=8, alpha=16, dropout 0.1 on q, v; "Question: ...\\nAnswer: ..."
  lora-cot  the same with the chain-of-thought prompt ("... Let's think step by step.")
  qlora     NF4 base (block 64, double-quantized scales), LoRA on every linear layer
  full      every parameter trains
  stacked   the lora run's adapter frozen, a second adapter trained on a second
            dataset: the same problems with Python-program solutions (code data)

Then each result (and the base, untouched) is evaluated on the same
`--eval-problems` GSM8K test problems (seed 1234), greedy, in its template:
accuracy ± standard error, ROUGE-1 against the reference solution, and the
perplexity of the reference solutions. Validation loss is on examples held out
from the training data (in each method's own template). Wall time is the
training loop (compilation included); peak memory is the device's peak where
the backend reports it, else the process's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {
    "lora": ("configs/sft_gsm8k_lora.py", []),
    "lora-cot": ("configs/sft_gsm8k_lora.py", ["--config.data.template=cot"]),
    "qlora": ("configs/sft_gsm8k_qlora.py", []),
    "full": ("configs/sft_gsm8k_full.py", []),
    "stacked": ("configs/sft_gsm8k_stacked.py", ["--config.data.template=python"]),
}


def finetune(name, args, workdir) -> dict:
  config, extra = METHODS[name]
  cmd = [sys.executable, os.path.join(ROOT, "launch/finetune.py"), "--config",
         os.path.join(ROOT, config), f"--config.init_from={args.base}",
         f"--config.data.path={args.data}", f"--config.train.steps={args.steps}",
         f"--config.train.batch_size={args.batch_size}", f"--config.train.seq_len={args.seq_len}",
         "--config.eval.problems=0", "--config.train.checkpoint_every=100000",
         f"--config.train.eval_every={args.steps}",
         f"--config.train.warmup_steps={min(20, args.steps // 5)}", "--workdir", workdir, *extra]
  if name == "stacked":
    cmd.append(f"--config.stack_from={os.path.join(args.workdir, 'lora')}")
  print("$", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def evaluate(path, template, problems, args) -> dict:
  from jaxslm.evaluation import EvalOptions, evaluate_gsm8k
  res = evaluate_gsm8k(path, problems, EvalOptions(
      template=template, max_new_tokens=args.max_new_tokens, batch_size=32,
      extractors=("strict-match", "flexible-extract")))
  s = res.summary
  return {"accuracy": s["accuracy"]["mean"], "stderr": s["accuracy"]["stderr"],
          "rouge1": s["rouge1"]["mean"], "ref_ppl": s["perplexity"]["ppl"],
          "format_strict": (s.get("format") or {}).get("strict")}


def table(rows) -> str:
  out = ["| method | trainable params | train wall time | peak memory | val loss | ref. ppl | "
         "ROUGE-1 | GSM8K acc. ± se |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    mem = r.get("peak_device_memory_bytes") or r.get("peak_host_rss_bytes")
    out.append(
        f"| {r['method']} | {r['trainable']:,} ({r['percent']:.2f}%) | "
        f"{r['train_s']:.0f} s | {mem / 2**20:,.0f} MiB | "
        + (f"{r['val_loss']:.3f}" if r.get("val_loss") is not None else "–")
        + f" | {r['ref_ppl']:.2f} | {r['rouge1']:.3f} | "
        f"{100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f}% |")
  return "\n".join(out)


def main(argv):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--base", required=True)
  ap.add_argument("--data", required=True, help="GSM8K directory (train.jsonl, test.jsonl)")
  ap.add_argument("--methods", default=",".join(METHODS))
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--batch-size", type=int, default=16)
  ap.add_argument("--seq-len", type=int, default=256)
  ap.add_argument("--eval-problems", type=int, default=100)
  ap.add_argument("--max-new-tokens", type=int, default=160)
  ap.add_argument("--workdir", default="runs/finetune_methods")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  methods = args.methods.split(",")
  unknown = [m for m in methods if m not in METHODS]
  if unknown or ("stacked" in methods and "lora" not in methods[:methods.index("stacked")]):
    raise SystemExit(f"--methods {args.methods}: valid methods are {', '.join(METHODS)}, and "
                     "stacked needs lora before it (its first stage)")
  from jaxslm.data import gsm8k
  from jaxslm.evaluation.gsm8k import peak_memory
  problems, _ = gsm8k.select(gsm8k.load("test", path=args.data).examples, args.eval_problems)
  rows = []
  base_eval = evaluate(args.base, "qa", problems, args)
  rows.append({"method": "base (no fine-tuning)", "trainable": 0, "percent": 0.0, "train_s": 0.0,
               **{k: v for k, v in peak_memory().items() if k.startswith("peak")},
               "val_loss": None, **base_eval})
  for name in methods:
    workdir = os.path.join(args.workdir, name)
    if os.path.exists(workdir):
      raise SystemExit(f"{workdir} exists; remove it or pass another --workdir")
    s = finetune(name, args, workdir)
    template = {"lora-cot": "cot"}.get(name, "qa")
    ev = evaluate(os.path.join(workdir, "export"), template, problems, args)
    rows.append({"method": name, "trainable": s["params"]["trainable"],
                 "percent": s["params"]["percent"], "train_s": s["train_s"],
                 "peak_device_memory_bytes": s["peak_device_memory_bytes"],
                 "peak_host_rss_bytes": s["peak_host_rss_bytes"],
                 "val_loss": s["last"].get("val_loss"), "quantized": s.get("quantized"), **ev})
    print(table(rows), flush=True)
  result = {"command": "python benchmarks/finetune_methods.py " + " ".join(argv),
            "date": datetime.date.today().isoformat(), "jax": jax.__version__,
            "device": jax.devices()[0].device_kind, "rows": rows, "markdown": table(rows)}
  print(result["markdown"])
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
