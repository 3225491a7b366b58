"""Few-shot GSM8K generation with and without compaction, in one process.

Rows of a batch decode in lockstep, so without compaction a batch runs until
its longest row ends: on GSM8K most answers end (at "Question:") long before
the few that run to the token budget. With compaction (`generate`'s default)
the rows still running move to a smaller batch once at most half remain. This
script times both on the same harness-layout 5-shot prompts, alternating A/B
over `--repeats` rounds after a warm-up that compiles every shape, checks that
the completions are identical, and writes a JSON.

    python benchmarks/compaction.py --checkpoint runs/smollm2 --data ../shared/data/gsm8k \
        --problems 32 --batch 8 --max-new-tokens 256 --out benchmarks/results/compaction.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--checkpoint", required=True)
  ap.add_argument("--data", required=True, help="local GSM8K directory")
  ap.add_argument("--problems", type=int, default=32)
  ap.add_argument("--offset", type=int, default=0, help="first test problem")
  ap.add_argument("--shots", type=int, default=5)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--max-new-tokens", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--out", default="benchmarks/results/compaction.json")
  args = ap.parse_args(argv)

  import jaxslm
  from jaxslm.sampling import generate
  from shared_prefix import prompts_for, run_record, write_json
  loaded = jaxslm.load(args.checkpoint)
  tok, cfg = loaded.tokenizer, loaded.model_cfg
  texts = prompts_for(args.data, args.offset + args.problems, args.shots)[args.offset:]
  ids = [tok.encode(t, add_bos=None) for t in texts]
  batches = [ids[i:i + args.batch] for i in range(0, len(ids), args.batch)]
  stops = ["Question:", "</s>", "<|im_end|>"]

  def run(compact: bool):
    total, out, sizes = 0.0, [], []
    for batch in batches:
      g = generate(cfg, loaded.params, batch, max_new_tokens=args.max_new_tokens,
                   temperature=0.0, eos_id=tok.eos_id, stop_strings=stops, tokenizer=tok,
                   compact=compact, logprobs=False)
      total += g.timing["total_s"]
      out += [c.tokens for c in g.completions]
      sizes.append(g.timing["compactions"])
    return total, out, sizes

  print(f"{len(ids)} prompts, batch {args.batch}, up to {args.max_new_tokens} new tokens; "
        "warm-up (compiles)", flush=True)
  t0 = time.perf_counter()
  run(True)
  run(False)
  warm = time.perf_counter() - t0
  times, outs, sizes = {True: [], False: []}, {}, None
  for r in range(args.repeats):
    for compact in (True, False) if r % 2 == 0 else (False, True):
      total, out, s = run(compact)
      times[compact].append(total)
      outs[compact] = out
      sizes = s if compact else sizes
      print(f"  round {r + 1}, compact={compact}: {total:.1f} s", flush=True)
  identical = sum(a == b for a, b in zip(outs[True], outs[False]))
  lengths = [len(t) for t in outs[False]]
  lockstep = sum(max(lengths[i:i + args.batch]) * len(lengths[i:i + args.batch])
                 for i in range(0, len(lengths), args.batch))
  med = {k: statistics.median(v) for k, v in times.items()}
  result = {
      **run_record("compaction.py", argv, args, cfg), "prompts": len(ids), "batch": args.batch,
      "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "warmup_s": warm,
      "compact_s": med[True], "whole_batch_s": med[False], "speedup": med[False] / med[True],
      "rounds": {"compact": times[True], "whole_batch": times[False]},
      "new_tokens": sum(lengths), "lockstep_row_steps": lockstep,
      "lockstep_waste": lockstep / max(sum(lengths), 1),
      "compactions_per_batch": sizes,
      "identical_completions": identical, "completions": len(outs[True]),
  }
  write_json(args.out, result)
  print(f"whole batch {med[False]:.1f} s -> compaction {med[True]:.1f} s "
        f"({result['speedup']:.2f}x); lockstep ran {result['lockstep_waste']:.2f}x the row-steps "
        f"it needed; identical completions {identical}/{len(outs[True])}")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
