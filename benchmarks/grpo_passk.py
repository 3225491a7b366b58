"""What a GRPO warm start can do on held-out synthetic problems: greedy accuracy,
and pass@1 / pass@k at several temperatures with the fraction of groups that mix
right and wrong answers (the only groups whose accuracy reward carries signal).

    python benchmarks/grpo_passk.py runs/gl4k/sft --max-steps 2 --problems 200 --k 8
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("checkpoint")
  ap.add_argument("--max-steps", type=int, default=2, help="reasoning steps per problem, at most")
  ap.add_argument("--problems", type=int, default=200)
  ap.add_argument("--k", type=int, default=8)
  ap.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 1.0, 1.2])
  ap.add_argument("--max-new-tokens", type=int, default=96)
  args = ap.parse_args(argv)

  import os
  from jaxslm.config import load_config
  from jaxslm.data.templates import get_template
  from jaxslm.train import grpo, grpo_data, rewards
  c = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "grpo_synthetic.py"))
  c.init_from, c.method = args.checkpoint, "full"
  c.data.synthetic_max_steps = args.max_steps
  model_cfg, params, tok, _, _ = grpo.build_policy(c)
  tpl = get_template(c.data.template)
  problems, source = grpo_data.load_problems(c.data, heldout=True, limit=args.problems)
  pool = grpo_data.encode_pool(problems, tok, tpl, budget=c.data.prompt_budget,
                               too_long="truncate", source=source)

  def correct(temperature: float, n: int) -> np.ndarray:
    ok = []
    for b in range(0, len(pool), 50):
      out = grpo_data.generate_for(model_cfg, params, tok, tpl, pool.ids[b:b + 50],
                                   max_new_tokens=args.max_new_tokens, temperature=temperature,
                                   n=n, seeds=list(range(b, min(b + 50, len(pool)))))
      texts = [grpo_data.completion_text(x, tok, tpl) for x in out.completions]
      ok += [rewards.is_correct(t, pool.golds[b + i // n], extractor=c.rewards.extractor)
             for i, t in enumerate(texts)]
    return np.asarray(ok, float).reshape(len(pool), n)

  print(f"{source}; {args.checkpoint}")
  print(f"greedy accuracy {correct(0.0, 1).mean():.3f}")
  for t in args.temperatures:
    a = correct(t, args.k)
    print(f"T={t}: pass@1 {a.mean():.3f}  pass@{args.k} {a.max(1).mean():.3f}  "
          f"mixed groups {np.mean(a.std(1) > 0):.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
