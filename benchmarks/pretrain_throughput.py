"""Pretraining throughput of jaxslm: tokens/s and MFU of the real `train_step`.

    python benchmarks/pretrain_throughput.py --presets tiny,slm26m,gpt2_124m \
        --batch 8 --seq 256 --steps 10 --warmup 2 --dtype float32 \
        --out benchmarks/results/cpu_jax.json

What is timed: the jitted `jaxslm.train.step.train_step` exactly as
`jaxslm.train.pretrain.run` builds it (`state_shardings` + `jit_train_step`) — AdamW with warmup-cosine schedule,
global-norm clipping and matrix-only weight decay from
`jaxslm.config.base_config().train`, the ("data", "fsdp") mesh with the
trainer's parameter/optimizer/batch shardings, donated state — fed random
token batches `[1, B, T+1]` (one micro-batch; grad_accum 1). The first
`--warmup` steps (compilation included) are discarded; each timed step is
followed by `block_until_ready` on the new state and metrics, and the median
step time is reported (the minimum too).

FLOPs (jaxslm.models.flops_per_token, PaLM appendix B):

    training FLOPs/token = 6·N + 12·L·H·T
    N = non-embedding parameters + V·D (the output head, tied or not)
    L layers, H = n_heads·head_dim, T sequence length

    tokens/s = B·T / median step time
    MFU      = tokens/s · FLOPs/token / (peak FLOP/s per device · devices)

The peak is `jaxslm.train.reporting.peak_flops_per_device()`'s: the vendor's
dense bf16 figure on GPU/TPU (e.g. 989 TFLOP/s for an H100 SXM), and on a CPU
the best measured fp32 1024x1024 matmul rate of this machine
(`reporting.measure_matmul_peak`, best of 30); `--peak-flops` overrides it.
The JSON says which was used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time

FLOP_FORMULA = ("training FLOPs/token = 6*N + 12*L*H*T, N = non-embedding params + V*D "
                "(output head, tied or not), L layers, H = n_heads*head_dim, T = seq len "
                "(PaLM appendix B; causal masking not subtracted)")
MFU_FORMULA = "MFU = tokens/s * FLOPs/token / (peak FLOP/s per device * device count)"
PRESETS = ("tiny", "slm26m", "gpt2_124m")


def base_parser(description: str) -> argparse.ArgumentParser:
  """The flags shared by the JAX and PyTorch benchmarks."""
  p = argparse.ArgumentParser(description=description,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--presets", default=",".join(PRESETS),
                 help="comma-separated jaxslm model presets")
  p.add_argument("--batch", type=int, default=8, help="global batch, in sequences")
  p.add_argument("--seq", type=int, default=256, help="sequence length T (tokens per row)")
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype (parameters and optimizer state stay float32)")
  p.add_argument("--peak-flops", type=float, default=0.0,
                 help="peak FLOP/s per device for MFU; 0 looks it up (GPU/TPU) or measures (CPU)")
  p.add_argument("--out", default="", help="write the results here as JSON")
  return p


CPU_PEAK_REPEATS = 30


def peak_flops(configured: float, backend: str) -> tuple[float, str]:
  """(peak FLOP/s per device, its source): jaxslm's lookup; on a CPU, a steadier measurement.

  `reporting.peak_flops_per_device` measures best-of-5 1024x1024 fp32 matmuls on a
  CPU; best of `CPU_PEAK_REPEATS` varies less from run to run.
  """
  from jaxslm.train import reporting
  if backend == "cpu" and not configured:
    peak = reporting.measure_matmul_peak(n=1024, repeats=CPU_PEAK_REPEATS)
    return peak, (f"measured fp32 matmul on this CPU (jaxslm.train.reporting.measure_matmul_peak,"
                  f" best of {CPU_PEAK_REPEATS} 1024x1024 matmuls under JAX)")
  return reporting.peak_flops_per_device(configured)


def check_args(args) -> list[str]:
  presets = [p.strip() for p in args.presets.split(",") if p.strip()]
  from jaxslm.models import PRESETS as known
  bad = [p for p in presets if p not in known]
  if bad or not presets:
    raise SystemExit(f"--presets {args.presets!r}: unknown preset(s) {bad}; "
                     f"choose from {sorted(known)}.")
  for name in ("batch", "seq", "steps"):
    if getattr(args, name) <= 0:
      raise SystemExit(f"--{name}={getattr(args, name)} must be positive.")
  if args.warmup < 1:
    raise SystemExit(f"--warmup={args.warmup}: at least 1 step is needed to exclude compilation.")
  return presets


def model_config(preset: str, dtype: str, seq: int):
  """The preset at this compute dtype, with max_seq_len raised to `seq` if needed.

  With RoPE, max_seq_len changes no parameter shape (tiny's is 128).
  """
  from jaxslm.models import ModelConfig
  cfg = ModelConfig.preset(preset, dtype=dtype)
  if seq > cfg.max_seq_len:
    if cfg.position != "rope":
      raise SystemExit(f"--seq={seq} exceeds {preset}.max_seq_len={cfg.max_seq_len} "
                       f"(learned positions); lower --seq.")
    cfg = cfg.replace(max_seq_len=seq)
  return cfg


class CpuContention:
  """CPU cores kept busy by *other* processes between start() and stop().

  On a shared CPU host other work skews the timings; this puts a number on it
  (from /proc/stat minus this process's own CPU time). None where unavailable.
  """

  def start(self) -> "CpuContention":
    self._t0, self._busy0, self._own0 = time.perf_counter(), _host_busy_s(), _own_cpu_s()
    return self

  def stop(self) -> float | None:
    busy = _host_busy_s()
    if busy is None or self._busy0 is None:
      return None
    wall = time.perf_counter() - self._t0
    others = (busy - self._busy0) - (_own_cpu_s() - self._own0)
    return round(max(others, 0.0) / max(wall, 1e-9), 3)


def _own_cpu_s() -> float:
  t = os.times()
  return t.user + t.system


def _host_busy_s() -> float | None:
  """Seconds of CPU time spent busy by all processes since boot (Linux)."""
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:
    return None


def step_stats(times: list[float], batch: int, seq: int, flops_tok: float, peak: float,
               devices: int) -> dict:
  median = statistics.median(times)
  tps = batch * seq / median
  return {
      "step_time_median_s": median, "step_time_min_s": min(times),
      "step_times_s": [round(t, 6) for t in times],
      "tokens_per_step": batch * seq, "tokens_per_s": tps,
      "tokens_per_s_per_device": tps / devices,
      "flops_per_token": flops_tok,
      "model_flops_per_s": tps * flops_tok,
      "mfu": tps * flops_tok / (peak * devices) if peak else None,
  }


def header(args, argv, *, implementation: str, peak: float, peak_source: str) -> dict:
  import jax
  return {
      "implementation": implementation,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join(shlex.quote(a) for a in
                          ["python", os.path.relpath(sys.argv[0]) if sys.argv[0] else "-",
                           *argv]),
      "jax_version": jax.__version__,
      "python_version": platform.python_version(),
      "host": {"cpu_count": os.cpu_count(), "processor": _cpu_name(),
               "loadavg_1min_at_start": loadavg()},
      "peak_flops_per_device": peak,
      "peak_flops_source": peak_source,
      "flop_formula": FLOP_FORMULA,
      "mfu_formula": MFU_FORMULA,
      "settings": {"batch": args.batch, "seq": args.seq, "steps": args.steps,
                   "warmup": args.warmup, "dtype": args.dtype},
  }


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def write_json(result: dict, path: str) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)
  print(f"Wrote {path}")


def print_row(r: dict) -> None:
  mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
  tag = r["preset"] + (f" [{r['mode']}]" if r.get("mode") else "")
  if "error" in r:
    print(f"{tag:>24}: FAILED ({r['error'][:200]})", flush=True)
    return
  print(f"{tag:>24}: B={r['batch']} T={r['seq']} {r['dtype']}: "
        f"step {1e3 * r['step_time_median_s']:.1f} ms (min {1e3 * r['step_time_min_s']:.1f}), "
        f"{r['tokens_per_s']:,.0f} tok/s, MFU {mfu}, first step {r['first_step_s']:.1f} s",
        flush=True)
  busy = r.get("other_processes_cpu_cores")
  if busy is not None and busy > 0.2:
    print(f"{'':>24}  warning: other processes kept {busy:.2f} CPU cores busy meanwhile; "
          f"the timing is skewed", flush=True)


def bench_preset(preset: str, args, mesh, peak: float) -> dict:
  """Time `train_step` for one preset; returns its JSON record."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxslm.config import base_config
  from jaxslm.models import count_params, flops_per_token, init_params
  from jaxslm.train.optim import make_optimizer
  from jaxslm.train.step import create_state, jit_train_step, state_shardings

  cfg = model_config(preset, args.dtype, args.seq)
  n_dev = mesh.devices.size
  if args.batch % n_dev:
    raise SystemExit(f"--batch={args.batch} must be divisible by the {n_dev} devices.")
  train_cfg = base_config().train
  optimizer, schedule = make_optimizer(train_cfg)
  seed = int(train_cfg.seed)

  # As jaxslm.train.pretrain.run: shardings from the abstract state, the step
  # jitted once by jit_train_step (explicit shardings, donated state).
  make_state = lambda: create_state(init_params(cfg, jax.random.PRNGKey(seed)), optimizer, seed)
  state_sh = state_shardings(jax.eval_shape(make_state), mesh)
  step_fn, batch_sh = jit_train_step(cfg, optimizer, schedule, state_sh, mesh)
  state = jax.jit(make_state, out_shardings=state_sh)()

  # Random tokens, on the device before timing; a few distinct batches in turn.
  rng = np.random.default_rng(0)
  shape = (1, args.batch, args.seq + 1)
  batches = [jax.device_put(rng.integers(0, cfg.vocab_size, shape, dtype=np.int32), batch_sh)
             for _ in range(min(4, args.warmup + args.steps))]
  jax.block_until_ready(batches)

  first = None
  for i in range(args.warmup):
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    if first is None:
      first = time.perf_counter() - t0
  times, contention = [], CpuContention().start()
  for i in range(args.steps):
    batch = batches[(args.warmup + i) % len(batches)]
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  other_cores = contention.stop()
  loss = float(jax.device_get(metrics["loss"]))
  if not np.isfinite(loss):
    raise RuntimeError(f"{preset}: loss is {loss} after {args.warmup + args.steps} steps.")

  counts = count_params(cfg)
  flops_tok = flops_per_token(cfg, args.seq)
  record = {
      "preset": preset, "mode": "jit",
      "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
      "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
      "param_dtype": cfg.param_dtype, "max_seq_len_used": cfg.max_seq_len,
      "first_step_s": first, "final_loss": loss, "other_processes_cpu_cores": other_cores,
      **step_stats(times, args.batch, args.seq, flops_tok, peak, n_dev),
  }
  del state, batches
  return record


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = base_parser(__doc__.splitlines()[0])
  parser.add_argument("--fsdp", type=int, default=1,
                      help="mesh.fsdp: devices that split parameters (the rest do data parallel)")
  args = parser.parse_args(argv)
  presets = check_args(args)

  import jax
  from jaxslm.config import base_config
  from jaxslm.train import parallel

  mesh = parallel.make_mesh(-1, args.fsdp)
  peak, peak_src = peak_flops(args.peak_flops, jax.default_backend())
  dev = jax.devices()[0]
  result = header(args, argv, implementation="jaxslm", peak=peak, peak_source=peak_src)
  result.update(
      device_kind=dev.device_kind, backend=jax.default_backend(), platform=dev.platform,
      device_count=jax.device_count(), process_count=jax.process_count(),
      mesh=dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape))),
      optimizer={k: base_config().train[k] for k in
                 ("lr", "min_lr", "warmup_steps", "b1", "b2", "eps", "weight_decay",
                  "grad_clip")},
      results=[])
  print(f"jaxslm {jax.__version__} on {jax.device_count()} x {dev.device_kind} "
        f"({jax.default_backend()}); peak {peak / 1e12:.3g} TFLOP/s per device ({peak_src})",
        flush=True)
  for preset in presets:
    try:
      record = bench_preset(preset, args, mesh, peak)
    except Exception as e:  # record and go on to the next preset (e.g. out of memory)
      record = {"preset": preset, "mode": "jit", "batch": args.batch, "seq": args.seq,
                "dtype": args.dtype, "error": f"{type(e).__name__}: {e}"}
    result["results"].append(record)
    print_row(record)
    write_json(result, args.out)  # partial results survive a crash later on
  return result


if __name__ == "__main__":
  main()
