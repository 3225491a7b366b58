"""Scaling sanity check on CPU: pretraining tokens/s of one config on 1, 2, 4, 8 fake devices.

    python benchmarks/scaling_cpu.py --preset small --batch 16 --seq 128 --steps 10 \
        --warmup 2 --devices 1,2,4,8 --fsdp 1,2 --out benchmarks/results/scaling_cpu.json

Each device count runs `benchmarks/pretrain_throughput.py` (the real jitted
`train_step` with the trainer's mesh, shardings and donated state; median step
time after the warm-up steps) in a fresh subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`. The global batch stays
fixed, so N devices each get batch/N rows (strong scaling); `--fsdp 1,2` also
runs each N >= 2 with parameters and optimizer state split over pairs of
devices (mesh data=N/2 x fsdp=2).

What the numbers mean: the fake devices share this machine's cores. One device
already spreads its matmuls over them through XLA's thread pool (partly, for a
small model), so the ceiling here is min(N, cores) × tokens/s(1) and the
realistic target is about 1×. `efficiency` = tokens/s(N) / tokens/s(1) shows
what splitting the step costs or gains on one host (collectives, smaller
per-device matmuls, more parallel work): above 1 the extra devices found idle
cores, below 1 the partitioning overhead dominates. On N real devices the same
program should approach N × tokens/s(1); this benchmark only shows the sharded
step runs and what its overhead is. The first run's measured CPU peak is reused
by the others (one MFU denominator for all rows).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pretrain_throughput as common  # benchmarks/pretrain_throughput.py, beside this file

HERE = pathlib.Path(__file__).resolve().parent


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--preset", default="small", help="jaxslm model preset")
  p.add_argument("--batch", type=int, default=16, help="global batch, in sequences (fixed)")
  p.add_argument("--seq", type=int, default=128, help="sequence length")
  p.add_argument("--steps", type=int, default=10, help="timed steps per device count")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--devices", default="1,2,4,8", help="comma-separated fake device counts")
  p.add_argument("--fsdp", default="1", help="comma-separated mesh.fsdp sizes, each run where "
                 "it divides the device count")
  p.add_argument("--timeout", type=int, default=300, help="seconds per device count")
  p.add_argument("--out", default="benchmarks/results/scaling_cpu.json")
  args = p.parse_args(argv)
  counts = [int(x) for x in args.devices.split(",") if x.strip()]
  bad = [n for n in counts if n < 1 or args.batch % n]
  if bad or not counts:
    raise SystemExit(f"--devices {args.devices!r}: each count must be >= 1 and divide "
                     f"--batch={args.batch} (bad: {bad}).")
  fsdps = [int(x) for x in args.fsdp.split(",") if x.strip()]
  if not fsdps or min(fsdps) < 1:
    raise SystemExit(f"--fsdp {args.fsdp!r}: positive sizes, e.g. 1,2.")
  runs = [(n, f) for n in counts for f in fsdps if n % f == 0 and (f == 1 or n > 1)]
  return args, runs


def run_one(n: int, fsdp: int, args, peak: float, tmp: str) -> dict:
  out = os.path.join(tmp, f"n{n}_f{fsdp}.json")
  cmd = [sys.executable, str(HERE / "pretrain_throughput.py"), "--presets", args.preset,
         "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
         "--warmup", str(args.warmup), "--dtype", args.dtype, "--fsdp", str(fsdp),
         "--out", out] + (["--peak-flops", repr(peak)] if peak else [])
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
  t0 = time.perf_counter()
  res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
  if res.returncode:
    return {"devices": n, "fsdp": fsdp, "error": (res.stdout + res.stderr)[-2000:]}
  data = json.loads(pathlib.Path(out).read_text())
  r = data["results"][0]
  if "error" in r:
    return {"devices": n, "fsdp": fsdp, "error": r["error"]}
  return {"devices": n, "fsdp": fsdp, "mesh": data["mesh"], "tokens_per_s": r["tokens_per_s"],
          "step_time_median_s": r["step_time_median_s"], "step_time_min_s": r["step_time_min_s"],
          "first_step_s": r["first_step_s"], "mfu": r["mfu"], "final_loss": r["final_loss"],
          "other_processes_cpu_cores": r["other_processes_cpu_cores"],
          "subprocess_s": round(time.perf_counter() - t0, 2),
          "_peak": (data["peak_flops_per_device"], data["peak_flops_source"],
                    data["jax_version"])}


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  args, runs = parse(argv)
  result = {"benchmark": "scaling_cpu",
            "command": " ".join(["python", "benchmarks/scaling_cpu.py", *argv]),
            "preset": args.preset, "batch": args.batch, "seq": args.seq, "steps": args.steps,
            "warmup": args.warmup, "dtype": args.dtype,
            "host": {"cpu_count": os.cpu_count(), "processor": common._cpu_name(),
                     "loadavg_1min_at_start": common.loadavg()},
            "efficiency_definition": "tokens/s(N devices) / tokens/s(1 device), global batch "
                                     "fixed; the fake devices share the host's cores",
            "results": []}
  peak = 0.0
  with tempfile.TemporaryDirectory() as tmp:
    for n, fsdp in runs:
      r = run_one(n, fsdp, args, peak, tmp)
      if "_peak" in r:
        peak_value, source, jax_version = r.pop("_peak")
        if not peak:
          peak = peak_value
          result.update(peak_flops_per_device=peak_value, peak_flops_source=source,
                        jax_version=jax_version)
      result["results"].append(r)
      base = next((x for x in result["results"] if x["devices"] == runs[0][0]
                   and x["fsdp"] == runs[0][1] and "tokens_per_s" in x), None)
      if "tokens_per_s" in r and base:
        r["efficiency"] = r["tokens_per_s"] / base["tokens_per_s"]
        busy = r["other_processes_cpu_cores"]
        print(f"{n} device(s), fsdp {r['fsdp']}: {r['tokens_per_s']:,.0f} tok/s, step "
              f"{1e3 * r['step_time_median_s']:.1f} ms, efficiency {r['efficiency']:.2f}"
              + (f" (other processes kept {busy:.2f} cores busy)" if busy and busy > 0.2 else ""),
              flush=True)
      else:
        print(f"{n} device(s), fsdp {fsdp}: FAILED {r.get('error', '')[-400:]}", flush=True)
  common.write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
