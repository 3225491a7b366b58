"""The GRPO step's memory estimate beside XLA's own account of the compiled step.

    python benchmarks/grpo_memory.py --init runs/smollm2 \\
        --shape 16,4,256,1 --shape 16,4,256,4 --shape 8,8,160,4 --shape 16,4,256,1,remat \\
        --out benchmarks/results/cpu_grpo_memory.json

Each `--shape P,G,M,K[,remat]` (prompts per step, group size, completion
slots, grpo.grad_accum, and optionally the model's `remat`) is the learning
step of `configs/grpo_synthetic.py` (LoRA r 8 on every projection, prompts of
its 128-token budget) on the checkpoint at `--init`, at the largest rollout
shape that setting can produce. The step is lowered and compiled from abstract
shapes only: nothing runs and no activation is allocated, so shapes far larger
than the host's memory can be measured. Printed per shape: the estimate that
`launch/grpo.py` prints before its first step (`jaxslm.train.memory`), XLA's
account (arguments, temporaries, peak), their ratio, and the compile time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def parse_shape(text: str) -> dict:
  parts = text.split(",")
  try:
    p, g, m, k = (int(x) for x in parts[:4])
  except ValueError:
    raise SystemExit(f"--shape {text!r}: expected P,G,M,K[,remat] (e.g. 16,4,256,1)") from None
  if len(parts) > 5 or (len(parts) == 5 and parts[4] != "remat"):
    raise SystemExit(f"--shape {text!r}: the fifth field can only be 'remat'")
  return {"P": p, "G": g, "M": m, "K": k, "remat": len(parts) == 5}


def measure(init: str, shape: dict) -> dict:
  import jax
  import jax.numpy as jnp
  from jaxslm import lora
  from jaxslm.config import load_config
  from jaxslm.train import memory
  from jaxslm.train.grpo_setup import _optimizer, build_policy, train_section
  from jaxslm.train.grpo_step import _step_jit

  p, g, m, k = shape["P"], shape["G"], shape["M"], shape["K"]
  c = load_config(os.path.join(os.path.dirname(HERE), "configs", "grpo_synthetic.py"))
  c.init_from = init
  c.grpo.update(prompts_per_step=p, G=g, max_new_tokens=m, grad_accum=k)
  model_cfg, params, _, _, kind = build_policy(c)
  model_cfg = dataclasses.replace(model_cfg, remat=shape["remat"])
  trainable, frozen = lora.split(params, kind)
  optimizer, _ = _optimizer(tuple(sorted(train_section(c).to_dict().items())))
  opt_state = optimizer.init(trainable)
  lp, n = c.data.prompt_budget - 1, p * g
  spec = jax.ShapeDtypeStruct
  batch = {"prefix": spec((p, lp), jnp.int32), "prefix_mask": spec((p, lp), bool),
           "suffix": spec((n, m), jnp.int32), "positions": spec((n, m), jnp.int32),
           "targets": spec((n, m), jnp.int32), "mask": spec((n, m), jnp.float32)}
  abstract = lambda t: jax.tree.map(lambda a: spec(a.shape, a.dtype), t)
  rows = spec((n, m), jnp.float32)
  t0 = time.perf_counter()
  compiled = _step_jit.lower(
      abstract(trainable), abstract(opt_state), abstract(frozen), batch, spec((n,), jnp.float32),
      rows, rows, spec((), jnp.float32), spec((), jnp.float32), jax.random.PRNGKey(0),
      model_cfg=model_cfg, optimizer=optimizer, aggregation=c.grpo.aggregation, norm_tokens=m,
      first=True, dropout=False, use_ref=True, shardings=None, kl_ratio_weighted=False,
      grad_accum=k).compile()
  compile_s = time.perf_counter() - t0
  stats = compiled.memory_analysis()
  est = memory.grpo_estimate(
      model_cfg, trainable=trainable, frozen=frozen, opt_state=opt_state,
      rows_per_device=max(n // k, 1), grad_copies=2 if k > 1 else 1, rollout_len=lp + 1 + m,
      sample_prompts=p, group=g, prompt_budget=c.data.prompt_budget, max_new_tokens=m)
  peak = stats.argument_size_in_bytes + memory.compiled_need(compiled)
  # The estimate counts the sampler's KV cache, which is freed before the update.
  est_step = est.total - est.parts.get("kv_cache", 0)
  return {**shape, "compile_s": round(compile_s, 1), "xla_arguments": stats.argument_size_in_bytes,
          "xla_temporaries": stats.temp_size_in_bytes, "xla_peak": peak,
          "estimate_step": est_step, "estimate_activations": est.parts["activations"],
          "estimate_over_xla": round(est_step / peak, 3)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--init", required=True, help="a checkpoint jaxslm.load opens")
  ap.add_argument("--shape", action="append", required=True, type=parse_shape,
                  help="P,G,M,K[,remat]; repeatable")
  ap.add_argument("--out", default="benchmarks/results/cpu_grpo_memory.json")
  args = ap.parse_args(argv)
  import jax
  from jaxslm.train.memory import fmt_bytes
  rows = []
  for shape in args.shape:
    r = measure(args.init, shape)
    rows.append(r)
    print(f"P {r['P']} G {r['G']} M {r['M']} K {r['K']}{' remat' if r['remat'] else ''}: "
          f"estimate {fmt_bytes(r['estimate_step'])}, XLA peak {fmt_bytes(r['xla_peak'])} "
          f"(temporaries {fmt_bytes(r['xla_temporaries'])}), ratio {r['estimate_over_xla']}, "
          f"compiled in {r['compile_s']} s", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"init": args.init, "jax": jax.__version__, "backend": jax.default_backend(),
               "machine": platform.processor() or platform.machine(), "shapes": rows}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
