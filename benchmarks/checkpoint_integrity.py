"""What checkpoint checksums cost: at save, at `jaxslm.load`, and for `verify_step`.

    python benchmarks/checkpoint_integrity.py --presets slm26m,gpt2_124m --repeats 5 \\
        --out benchmarks/results/cpu_checkpoint_integrity.json

For each preset a step is saved with `jaxslm.checkpoint.Checkpointer`
(synchronously): random fp32 params of the preset's shapes and an AdamW state
whose moments are random too (zeros would compress to nothing). Then, each
`--repeats` times, the median reported:

- save: `checksums.record` of params + opt_state (the work checksums add to a
  save) against the whole save.
- load: `jaxslm.load(step_dir)` (meta + params, verified) against the same
  read without verification (the meta read, the tokenizer and an Orbax
  restore of params onto the same target: what `jaxslm.load` did before
  checksums), and the
  verification alone (`checksums.check_tree` of the loaded params).
- verify_step: reading and checking the whole step (params and opt_state).

Reads after the first hit the page cache, so the load time is the time of a
warm read; a cold read from disk takes longer, which makes the relative cost
of the checksums smaller than reported here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretrain_throughput as common  # noqa: E402  CpuContention, _cpu_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHARED_TIKTOKEN = os.path.join(os.path.dirname(ROOT), "shared", "tiktoken_cache")
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(_SHARED_TIKTOKEN):
  os.environ["TIKTOKEN_CACHE_DIR"] = _SHARED_TIKTOKEN   # the GPT-2 ranks, offline


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
  times, out = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times, out


def bench(preset: str, repeats: int, workdir: str) -> dict:
  import jax
  import numpy as np
  import optax
  import orbax.checkpoint as ocp

  import jaxslm
  from jaxslm import checksums, integrity, tokenizers
  from jaxslm import checkpoint as ckpt
  from jaxslm.models import ModelConfig
  from jaxslm.models.summary import param_shapes

  cfg = ModelConfig.preset(preset, dtype="float32")
  rng = np.random.default_rng(0)
  rand = lambda a: jax.numpy.asarray(rng.normal(0, 0.02, a.shape).astype(a.dtype))  # noqa: E731
  params = jax.tree.map(rand, param_shapes(cfg))
  opt_state = jax.tree.map(lambda x: rand(x) if x.ndim else x, optax.adamw(1e-3).init(params))
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  n_opt_bytes = sum(x.nbytes for x in jax.tree.leaves(opt_state))
  meta = {"step": 1, "model": cfg.to_dict(),
          "tokenizer": {"kind": "tiktoken", "name": "gpt2", "encoding": "gpt2"}}

  record_s, record_times, _ = timed(lambda: checksums.record(
      {"params": params, "opt_state": opt_state}, meta), repeats)
  save_times = []
  for i in range(repeats):
    c = ckpt.Checkpointer(os.path.join(workdir, preset, f"save{i}"), keep=1, async_save=False)
    t0 = time.perf_counter()
    c.save(1, params, opt_state, meta)
    c.wait()
    save_times.append(time.perf_counter() - t0)
    c.close()
  step_dir = os.path.join(workdir, preset, "save0", "1")

  def plain_load():
    """`jaxslm.load` as it was before checksums: the same reads, unverified."""
    m = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(step_dir, "meta"))
    model_cfg = ModelConfig.from_dict(m["model"])
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          param_shapes(model_cfg))
    out = ocp.StandardCheckpointer().restore(os.path.join(step_dir, "params"), target)
    tokenizers.from_spec(m["tokenizer"])
    jax.block_until_ready(out)
    return out

  def verified_load():
    out = jaxslm.load(step_dir).params
    jax.block_until_ready(out)
    return out

  plain_load()   # first read: page cache, Orbax and TensorStore start-up
  plain_s, plain_times, _ = timed(plain_load, repeats)
  load_s, load_times, loaded = timed(verified_load, repeats)
  rec = ckpt.read_step_meta(step_dir, with_checksums=True)[checksums.KEY]["params"]
  check_s, check_times, result = timed(lambda: checksums.check_tree("params", rec, loaded), repeats)
  assert result == (None, 0), result
  verify_s, verify_times, problem = timed(lambda: integrity.verify_step(step_dir), repeats)
  assert problem is None, problem
  return {
      "preset": preset, "param_bytes": n_bytes, "opt_state_bytes": n_opt_bytes,
      "save_s": statistics.median(save_times), "save_times_s": save_times,
      "checksum_record_s": record_s, "checksum_record_times_s": record_times,
      "save_overhead": record_s / statistics.median(save_times),
      "load_plain_s": plain_s, "load_plain_times_s": plain_times,
      "load_verified_s": load_s, "load_verified_times_s": load_times,
      "verify_params_s": check_s, "verify_params_times_s": check_times,
      "load_overhead_verify_over_plain": check_s / plain_s,
      "load_overhead_measured": (load_s - plain_s) / plain_s,
      "hash_gb_per_s": n_bytes / check_s / 1e9,
      "verify_step_s": verify_s, "verify_step_times_s": verify_times,
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--presets", default="slm26m,gpt2_124m")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  import jax
  import orbax.checkpoint
  import xxhash
  rows = []
  contention = common.CpuContention().start()
  with tempfile.TemporaryDirectory(prefix="jaxslm-ckpt-bench-") as workdir:
    for preset in args.presets.split(","):
      row = bench(preset, args.repeats, workdir)
      rows.append(row)
      print(f"{preset}: params {row['param_bytes'] / 2**20:.0f} MiB; load {row['load_plain_s']:.3f} s "
            f"plain, {row['load_verified_s']:.3f} s verified; verification {row['verify_params_s']:.3f} s "
            f"= {100 * row['load_overhead_verify_over_plain']:.1f}% of the plain load "
            f"({row['hash_gb_per_s']:.2f} GB/s); save {row['save_s']:.3f} s of which checksums "
            f"{row['checksum_record_s']:.3f} s ({100 * row['save_overhead']:.1f}%); "
            f"verify_step {row['verify_step_s']:.3f} s", flush=True)
  other = contention.stop()
  if other is not None and other > 0.2:
    print(f"warning: other processes kept {other:.2f} CPU cores busy while this ran; the "
          "timings are disturbed", file=sys.stderr)
  result = {
      "benchmark": "checkpoint_integrity", "date": datetime.date.today().isoformat(),
      "command": "python " + " ".join([os.path.relpath(__file__, os.getcwd())] + sys.argv[1:]),
      "device": str(jax.devices()[0].platform), "cpu": common._cpu_name(), "cpu_count": os.cpu_count(),
      "jax": jax.__version__, "orbax_checkpoint": orbax.checkpoint.__version__,
      "xxhash": xxhash.VERSION, "python": platform.python_version(),
      "other_processes_cpu_cores": other, "rows": rows,
  }
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
