"""Few-shot generation with and without the shared-prefix prefill, in one process.

Every GSM8K 5-shot prompt in lm-evaluation-harness's layout starts with the same
five exemplars (its `first_n` sampler), about 800 tokens before each question.
`jaxslm.generate` runs that common prefix once per call and copies its cache
to every row (`share_prefix=True`, the default); `share_prefix=False` runs
every prompt whole. This script times both on the same prompts, alternating
A/B over `--repeats` rounds after a warm-up that compiles every shape, checks
that the completions are identical, and writes a JSON.

    python benchmarks/shared_prefix.py --checkpoint runs/smollm2 --data ../shared/data/gsm8k \
        --problems 16 --batch 8 --max-new-tokens 256 --out benchmarks/results/shared_prefix.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prompts_for(data: str, n: int, shots: int) -> list[str]:
  from jaxslm.data import gsm8k
  from jaxslm.data.templates import fewshot_prompt, get_template
  train = gsm8k.load("train", path=data).examples
  test = gsm8k.load("test", path=data).examples[:n]
  tmpl = get_template("qa")
  exemplars = [(e.question, e.answer, e.gold) for e in train[:shots]]   # first_n
  return [fewshot_prompt(tmpl, exemplars, p.question) for p in test]


def run_record(script: str, argv, args, cfg) -> dict:
  """The head of a result JSON: the command, the date, the machine, the model."""
  import jax
  return {"command": " ".join(["python", f"benchmarks/{script}", *(argv or sys.argv[1:])]),
          "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
          "device": jax.devices()[0].device_kind, "cpu": platform.processor() or platform.machine(),
          "cores": os.cpu_count(), "model": os.path.basename(args.checkpoint.rstrip("/")),
          "dtype": str(cfg.dtype)}


def write_json(path: str, result: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--checkpoint", required=True)
  ap.add_argument("--data", required=True, help="local GSM8K directory")
  ap.add_argument("--problems", type=int, default=16)
  ap.add_argument("--shots", type=int, default=5)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--max-new-tokens", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--out", default="benchmarks/results/shared_prefix.json")
  args = ap.parse_args(argv)

  import jaxslm
  from jaxslm.sampling import generate
  loaded = jaxslm.load(args.checkpoint)
  tok, cfg = loaded.tokenizer, loaded.model_cfg
  texts = prompts_for(args.data, args.problems, args.shots)
  ids = [tok.encode(t, add_bos=None) for t in texts]
  batches = [ids[i:i + args.batch] for i in range(0, len(ids), args.batch)]
  stops = ["Question:", "</s>", "<|im_end|>"]

  def run(share: bool) -> tuple[float, float, list, int]:
    prefill = total = 0.0
    out, shared = [], 0
    for batch in batches:
      g = generate(cfg, loaded.params, batch, max_new_tokens=args.max_new_tokens,
                   temperature=0.0, eos_id=tok.eos_id, stop_strings=stops, tokenizer=tok,
                   share_prefix=share)
      prefill += g.timing["prefill_s"]
      total += g.timing["total_s"]
      shared = max(shared, g.timing["shared_prefix"])
      out += [c.tokens for c in g.completions]
    return prefill, total, out, shared

  print(f"{len(ids)} prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens, batch "
        f"{args.batch}, {args.max_new_tokens} new tokens; warm-up (compiles)", flush=True)
  t0 = time.perf_counter()
  run(True)
  run(False)
  warm = time.perf_counter() - t0
  times = {True: [], False: []}
  outs = {}
  for r in range(args.repeats):
    for share in (True, False) if r % 2 == 0 else (False, True):
      prefill, total, out, shared = run(share)
      times[share].append((prefill, total))
      outs[share] = out
      if share:
        common = shared
      print(f"  round {r + 1}, share_prefix={share}: prefill {prefill:.1f} s, total "
            f"{total:.1f} s", flush=True)
  identical = sum(a == b for a, b in zip(outs[True], outs[False]))
  med = {k: (statistics.median(p for p, _ in v), statistics.median(t for _, t in v))
         for k, v in times.items()}
  result = {
      **run_record("shared_prefix.py", argv, args, cfg), "prompts": len(ids), "prompt_tokens": [min(map(len, ids)),
                                                                        max(map(len, ids))],
      "shared_prefix_tokens": common, "batch": args.batch,
      "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "warmup_s": warm,
      "shared": {"prefill_s": med[True][0], "total_s": med[True][1]},
      "whole": {"prefill_s": med[False][0], "total_s": med[False][1]},
      "prefill_speedup": med[False][0] / med[True][0],
      "total_speedup": med[False][1] / med[True][1],
      "identical_completions": identical, "completions": len(outs[True]),
  }
  write_json(args.out, result)
  print(f"shared prefix of {common} tokens: prefill {med[False][0]:.1f} s -> {med[True][0]:.1f} s "
        f"({result['prefill_speedup']:.2f}x), total {med[False][1]:.1f} s -> {med[True][1]:.1f} s "
        f"({result['total_speedup']:.2f}x); identical completions {identical}/{len(outs[True])}")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
