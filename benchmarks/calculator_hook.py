"""Accuracy of a checkpoint on unseen synthetic problems, with and without the
GSM8K calculator hook (`calculator=True`: after `<<expr=` the sampler writes
the value of expr for the model).

  python benchmarks/calculator_hook.py --checkpoint runs/default --problems 200 --seed 1234

Problems come from `SyntheticMath(seed)`; the default run trains on seed 0, so
any other seed gives problems it never saw. Greedy, batched, one pass per mode.
Reports exact match of the `#### N` answer and the share of written
`<<expr=value>>` annotations whose value is right.
"""

from __future__ import annotations

import argparse
import json
import re
import time

from jaxslm.data.synthetic import SyntheticMath, evaluate, extract_final_answer
from jaxslm.sampling import generate
import jaxslm

_ANNOT = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


def annotation_accuracy(text: str) -> tuple[int, int]:
  right = total = 0
  for expr, shown in _ANNOT.findall(text):
    total += 1
    try:
      right += evaluate(expr) == evaluate(shown.replace(",", ""))
    except (ValueError, ZeroDivisionError):
      pass
  return right, total


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", required=True)
  ap.add_argument("--problems", type=int, default=200)
  ap.add_argument("--seed", type=int, default=1234)
  ap.add_argument("--max-new-tokens", type=int, default=160)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  model = jaxslm.load(args.checkpoint)
  tok = model.tokenizer
  gen = SyntheticMath(args.seed)
  problems = [gen.problem(i) for i in range(args.problems)]
  prompts = [tok.encode(f"Question: {p.question}\nAnswer:") for p in problems]
  result = {"checkpoint": model.path, "problems": args.problems, "seed": args.seed}
  for mode in ("plain", "calculator"):
    t0, correct, right, total, texts = time.perf_counter(), 0, 0, 0, []
    for s in range(0, len(prompts), args.batch):
      out = generate(model.model_cfg, model.params, prompts[s:s + args.batch],
                     max_new_tokens=args.max_new_tokens, eos_id=tok.eos_id, tokenizer=tok,
                     stop_strings=["\nQuestion:"], calculator=mode == "calculator")
      texts += out.texts
    for p, text in zip(problems, texts):
      correct += extract_final_answer(text) == str(p.final_answer)
      r, t = annotation_accuracy(text)
      right, total = right + r, total + t
    result[mode] = {"accuracy": correct / len(problems), "correct": correct,
                    "annotations_right": right, "annotations": total,
                    "seconds": round(time.perf_counter() - t0, 1), "example": texts[0]}
    print(f"{mode:>10}: {correct}/{len(problems)} answers right ({correct / len(problems):.1%}); "
          f"annotations right {right}/{total}; {result[mode]['seconds']} s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
