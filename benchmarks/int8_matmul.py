"""int8 matmul forms under jit: which one `jaxslm.ops.dense` should use for an Int8Weight.

    python benchmarks/int8_matmul.py --rows 1,16,64,512 --out benchmarks/results/cpu_int8_matmul.json

x [M, I] float32 times a [I, O] kernel (default 1536 x 4096, slm26m's MLP
shape scaled up to be larger than the caches), median of --repeats calls each:

  float32      x @ w                                    (the unquantized reference)
  dequantize   (x @ q.astype(float32)) * s_o            (weight-only int8)
  int8_dot     (int8(x / s_m) @ q in int32) * s_m * s_o (activations per row too)

max_rel_error: max |y - y64| / max |y64|, y64 = float64 x @ w with the float
weights (so the int8 forms include their weight and activation rounding).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", default="1,16,64,512", help="M values (tokens per matmul)")
  ap.add_argument("--shape", default="1536,4096", help="kernel in,out")
  ap.add_argument("--repeats", type=int, default=30)
  ap.add_argument("--out", default="")
  args = ap.parse_args(argv)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jaxslm import ops, quant

  i, o = (int(x) for x in args.shape.split(","))
  w = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (i, o), jnp.float32)
  forms = {"float32": jax.jit(lambda x: x @ w)}
  for name in ("dequantize", "int8_dot"):
    q = quant.quantize_int8(w, matmul=name)
    forms[name] = jax.jit(lambda x, q=q: ops.dense(x, q, jnp.float32))
  result = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "kernel": [i, o], "repeats": args.repeats, "rows": {}}
  for m in (int(x) for x in args.rows.split(",")):
    x = jax.random.normal(jax.random.PRNGKey(m), (m, i), jnp.float32)
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    row = {}
    for name, f in forms.items():
      err = float(np.abs(np.asarray(f(x)) - ref).max() / np.abs(ref).max())
      times = []
      for _ in range(args.repeats):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t0)
      row[name] = {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                   "max_rel_error": err}
    result["rows"][m] = row
    print(f"M={m:4d}: " + ", ".join(f"{n} {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, "
                                    f"err {r['max_rel_error']:.1e})" for n, r in row.items()),
          flush=True)
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=1)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
