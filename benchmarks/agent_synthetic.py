"""The agent loop for real: a checkpoint trained on agent traces
(`configs/react.py`) answers unseen synthetic problems, once with the
calculator tool (`jaxslm.agent.run_agent`) and once alone (the same prompt,
the model writing its own "Observation:" values).

  python launch/pretrain.py --config configs/react.py --workdir runs/react
  python benchmarks/agent_synthetic.py --checkpoint runs/react --problems 200 --seed 1234

Greedy; both modes batched over all problems.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time

import jaxslm
from jaxslm.agent import AgentFormat, model_generator, run_agent
from jaxslm.data.synthetic import SyntheticMath

_FINAL = re.compile(r"Final Answer:[ \t]*([^\n]*)")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", required=True)
  ap.add_argument("--problems", type=int, default=200)
  ap.add_argument("--seed", type=int, default=1234)
  ap.add_argument("--max-steps", type=int, default=8)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  model = jaxslm.load(args.checkpoint)
  gen = SyntheticMath(args.seed)
  problems = [gen.problem(i) for i in range(args.problems)]
  questions = [p.question for p in problems]
  fmt = AgentFormat(header="")
  result = {"checkpoint": model.path, "problems": args.problems, "seed": args.seed}

  t0 = time.perf_counter()
  traces = run_agent(model_generator(model), questions, fmt=fmt, max_steps=args.max_steps,
                     max_new_tokens=64)
  correct = sum(t.final_answer == str(p.final_answer) for p, t in zip(problems, traces))
  calls = [len(t.steps) for t in traces]
  result["agent"] = {
      "accuracy": correct / len(problems), "correct": correct,
      "stop_reasons": dict(collections.Counter(t.stop_reason for t in traces)),
      "tool_calls_mean": sum(calls) / len(calls),
      "tool_calls_equal_to_steps": sum(c == p.num_steps for c, p in zip(calls, problems)),
      "tool_errors": sum(s.observation.startswith("Error") for t in traces for s in t.steps),
      "seconds": round(time.perf_counter() - t0, 1), "example": traces[0].transcript}

  t0 = time.perf_counter()
  prompts = [fmt.prompt(q, []) for q in questions]
  texts = jaxslm.sample(model, prompts, max_new_tokens=256, stop=["\nQuestion:"])
  alone = [(_FINAL.findall(t) or [None])[0] for t in texts]
  correct_alone = sum(a == str(p.final_answer) for a, p in zip(alone, problems))
  result["alone"] = {"accuracy": correct_alone / len(problems), "correct": correct_alone,
                     "no_final_answer": sum(a is None for a in alone),
                     "seconds": round(time.perf_counter() - t0, 1), "example": prompts[0] + texts[0]}
  for mode in ("agent", "alone"):
    r = result[mode]
    print(f"{mode:>6}: {r['correct']}/{len(problems)} right ({r['accuracy']:.1%}), {r['seconds']} s")
  print("agent stop reasons:", result["agent"]["stop_reasons"],
        "| mean tool calls", round(result["agent"]["tool_calls_mean"], 2))
  print("--- example ---\n" + result["agent"]["example"])
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
