"""The train step's memory estimate beside XLA's own account of the compiled step.

`jaxslm.train.memory.estimate` (params, AdamW state, gradients: exact; the
activations: a formula) against the peak XLA reports for the compiled
pretraining step (`memory_analysis()`: arguments + outputs not aliasing a
donated input + temporaries). The step is compiled only, never run, so shapes
far beyond this host's memory can be checked.

    python benchmarks/train_memory.py --out benchmarks/results/cpu_train_memory.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [   # (preset, overrides, rows, tokens)
    ("small", {}, 8, 256),
    ("small", {}, 8, 128),
    ("slm26m", {}, 8, 512),
    ("slm26m", {"remat": True}, 8, 512),
    ("llama135m", {"max_seq_len": 1024}, 4, 384),
]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="benchmarks/results/cpu_train_memory.json")
  args = ap.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import optax
  from jaxslm.models import ModelConfig, init_params
  from jaxslm.train import memory
  from jaxslm.train.step import create_state, train_step
  rows = []
  for preset, over, b, t in SHAPES:
    cfg = ModelConfig.preset(preset, dtype="float32", **over)
    opt = optax.adamw(1e-3)
    state = jax.eval_shape(lambda: create_state(init_params(cfg, jax.random.PRNGKey(0)), opt, 0))
    step = jax.jit(functools.partial(train_step, model_cfg=cfg, optimizer=opt,
                                     schedule=lambda s: 1e-3), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, jax.ShapeDtypeStruct((1, b, t + 1), jnp.int32)).compile()
    peak = compiled.memory_analysis().argument_size_in_bytes + memory.compiled_need(compiled)
    est = memory.estimate(cfg, params=state.params, opt_state=state.opt_state,
                          batch_per_device=b, seq_len=t)
    row = {"preset": preset, "overrides": over, "rows": b, "tokens": t,
           "estimate_bytes": est.total, "activations_bytes": est.parts["activations"],
           "xla_peak_bytes": peak, "share": est.total / peak,
           "compile_s": time.perf_counter() - t0}
    rows.append(row)
    print(f"{preset} {over or ''} {b} x {t}: estimate {memory.fmt_bytes(est.total)}, XLA peak "
          f"{memory.fmt_bytes(peak)}, share {row['share']:.2f}", flush=True)
  out = {"command": " ".join(["python", "benchmarks/train_memory.py", *(argv or sys.argv[1:])]),
         "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
         "device": jax.devices()[0].device_kind, "rows": rows}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=2)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
