"""Sample from a checkpoint, streaming tokens to the terminal as they are generated.

  python launch/sample.py --checkpoint runs/default --prompt "Question: Ava has 3 boxes of 12 pens. How many pens does she have?
Answer:"
  python launch/sample.py --checkpoint runs/default --prompt "Question: ..." --temperature 0.8 --top-p 0.95 --seed 1
  python launch/sample.py --checkpoint runs/default --prompt "..." --calculator --stop "Question:"
  python launch/sample.py --checkpoint runs/default --prompt "A" --prompt "B" --n 2   # several: printed at the end
  python launch/sample.py --checkpoint runs/default --prompt "..." --quantize int8    # int8 kernels

--checkpoint takes a run's workdir (latest step), its checkpoints/ dir or one
step's directory. With one prompt and --n 1 the text streams; otherwise every
completion is printed when all are done. The prompt starts with BOS where the
model's tokenizer says so (models converted from Llama 3, Gemma or Mistral;
--add-bos true/false forces it). Exit codes: 0 ok, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

import jaxslm
from jaxslm.errors import UserError, report
from jaxslm.sampling.stream import TextStream


def parse(argv):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--checkpoint", required=True)
  ap.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
  ap.add_argument("--max-new-tokens", type=int, default=128)
  ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  ap.add_argument("--top-k", type=int, default=None)
  ap.add_argument("--top-p", type=float, default=1.0)
  ap.add_argument("--min-p", type=float, default=0.0)
  ap.add_argument("--n", type=int, default=1, help="completions per prompt")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
  ap.add_argument("--calculator", action="store_true", help="fill in <<expr= with its value")
  ap.add_argument("--truncate", action="store_true",
                  help="keep the last tokens of a prompt that leaves fewer than 16 tokens of "
                  "the context (the budget is otherwise the rest of the context)")
  ap.add_argument("--quantize", choices=("none", "int8", "int8-dynamic"), default="none",
                  help="int8: projection kernels as int8 with per-channel scales (weight-only); "
                       "int8-dynamic: activations per token and the head too, faster at batch on "
                       "CPUs (docs/inference.md)")
  ap.add_argument("--add-bos", choices=("auto", "true", "false"), default="auto",
                  help="BOS before the prompt; auto: the tokenizer's add_bos_default (true "
                       "for models converted from Llama 3 / Gemma / Mistral)")
  return ap.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse(argv)
  midline = False   # the streamed prompt is on the terminal, its line not yet ended
  try:
    model = jaxslm.load(args.checkpoint, quantize=args.quantize)
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, min_p=args.min_p, n=args.n, seed=args.seed, stop=args.stop,
              calculator=args.calculator, truncate=args.truncate,
              add_bos={"auto": None, "true": True, "false": False}[args.add_bos])
    if len(args.prompt) == 1 and args.n == 1:
      stream = TextStream(model.tokenizer, args.stop, skip_ids=[model.tokenizer.eos_id])
      print(args.prompt[0], end="", flush=True)
      midline = not args.prompt[0].endswith("\n")
      out = jaxslm.sample(model, args.prompt[0], return_result=True, chunk_size=1,
                          on_tokens=lambda row, ids: print(stream.push(ids), end="", flush=True),
                          **kw)
      print(stream.finish())
      midline = False
      c = out.completions[0]
      print(f"[{len(c.tokens)} tokens, {c.finish_reason}, {out.timing['total_s']:.2f} s]",
            file=sys.stderr)
    else:
      texts = jaxslm.sample(model, args.prompt, **kw)
      for i, (prompt, text) in enumerate(zip(args.prompt, texts)):
        for j, t in enumerate([text] if args.n == 1 else text):
          print(f"=== prompt {i} sample {j} ===\n{prompt}{t}")
  except (UserError, FileNotFoundError) as e:
    if midline:   # the error gets a line of its own, not the end of the prompt's
      print(flush=True)
    return report(e)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
