"""Perplexity of GSM8K reference solutions under each int8 form, against the
unquantized model: the quality check for int8 weight-only inference.

  python launch/convert.py gguf2jax --gguf models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smollm2
  python benchmarks/int8_quality.py --checkpoint runs/smollm2 --data ../shared/data/gsm8k \
      --problems 50 --out benchmarks/results/cpu_int8_quality.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

FORMS = [("float32", None),
         ("int8_dot, projections + embedding/head", dict(embeddings=True, matmul="int8_dot")),
         ("int8_dot, projections", dict(embeddings=False, matmul="int8_dot")),
         ("dequantize, projections + embedding/head", dict(embeddings=True, matmul="dequantize")),
         ("dequantize, projections", dict(embeddings=False, matmul="dequantize"))]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--checkpoint", required=True)
  ap.add_argument("--data", default=None, help="local GSM8K directory (default: the hub)")
  ap.add_argument("--problems", type=int, default=50)
  ap.add_argument("--seed", type=int, default=1234)
  ap.add_argument("--template", default="qa")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)

  import jaxslm
  from jaxslm import quant
  from jaxslm.data import gsm8k
  from jaxslm.data.templates import get_template
  from jaxslm.evaluation.perplexity import perplexity
  model = jaxslm.load(args.checkpoint)
  split = gsm8k.load("test", "main", path=args.data)
  problems, _ = gsm8k.select(split.examples, args.problems, seed=args.seed)
  t = get_template(args.template)
  contexts = [t.prompt(p.question) for p in problems]
  targets = [t.target(p.answer, p.gold) for p in problems]
  rows = []
  for name, kwargs in FORMS:
    params = model.params if kwargs is None else quant.quantize_int8_params(model.params, **kwargs)
    r = perplexity(dataclasses.replace(model, params=params), targets, contexts)
    rows.append({"form": name, "ppl": r["ppl"], "tokens": r["tokens"]})
    base = rows[0]["ppl"]
    print(f"{name:42s} ppl {r['ppl']:.4f} ({100 * (r['ppl'] / base - 1):+.2f}%)", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"checkpoint": args.checkpoint, "problems": args.problems, "seed": args.seed,
                 "template": args.template, "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
