"""GSM8K evaluation in the agent mode: one thought / action / observation episode
per problem (`jaxslm.agent` with the calculator), the episodes advanced together
and their generate calls chunked by `batch_size`. Called by `evaluate_gsm8k`."""

from __future__ import annotations

import time
from collections import Counter


def agent_all(loaded, problems, opts, log):
  """One agent episode per problem, advanced together, generate calls chunked."""
  from jaxslm.agent import AgentFormat, model_generator, run_agent
  from jaxslm.tools import calculator
  base = model_generator(loaded, temperature=opts.temperature, seed=opts.seed,
                         top_p=opts.top_p, add_bos=opts.add_bos)
  tok = loaded.tokenizer
  counts = Counter()

  def chunked(prompts, stop, max_new_tokens):
    out = []
    for b in range(0, len(prompts), opts.batch_size):
      out += base(prompts[b:b + opts.batch_size], stop, max_new_tokens)
    counts["calls"] += 1
    counts["new_tokens"] += sum(len(tok.encode(t)) for t in out if t)
    return out

  t0 = time.perf_counter()
  traces = run_agent(chunked, [p.question for p in problems], max_steps=opts.agent_max_steps,
                     max_new_tokens=opts.max_new_tokens)
  dt = time.perf_counter() - t0
  log(f"  agent: {len(problems)} episodes, {counts['calls']} rounds ({dt:.1f} s)")
  samples, prompts = [], []
  fmt = AgentFormat()
  for tr in traces:
    prompt = fmt.prompt(tr.question, (calculator,))
    prompts.append(prompt)
    finish = {"final_answer": "eos", "no_action": "eos"}.get(tr.stop_reason, "length")
    completion = tr.transcript[len(prompt):]
    samples.append([{"completion": completion, "tokens": len(tok.encode(completion)),
                     "finish_reason": finish, "agent_stop": tr.stop_reason,
                     "agent_steps": len(tr.steps), "final_answer": tr.final_answer}])
  info = {"new_tokens": counts["new_tokens"], "agent_rounds": counts["calls"]}
  return prompts, samples, [dt / max(len(problems), 1)] * len(problems), info
