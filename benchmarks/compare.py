"""Compare pretraining throughput of jaxslm and the PyTorch reference.

    python benchmarks/compare.py benchmarks/results/cpu_jax.json \
        benchmarks/results/cpu_torch.json --out benchmarks/results/cpu_compare.md

Reads any number of JSONs written by `pretrain_throughput.py` (jaxslm) and
`torch_reference.py` (torch), matches rows by (preset, batch, seq, dtype), and
prints a markdown table: tokens/s and MFU per implementation and mode, and the
JAX/torch tokens/s ratio against each torch mode (> 1: JAX is faster). Rows
that failed show their error; rows measured at different settings are not
compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def load(paths: list[str]) -> list[dict]:
  runs = []
  for path in paths:
    try:
      with open(path) as f:
        run = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise SystemExit(f"Cannot read benchmark JSON {path!r}: {e}. Pass files written by "
                       f"pretrain_throughput.py or torch_reference.py.")
    if "results" not in run or "implementation" not in run:
      raise SystemExit(f"{path!r} is not a benchmark JSON (no 'results'/'implementation').")
    run["_path"] = path
    runs.append(run)
  return runs


def _fmt_tps(r: dict | None) -> str:
  if r is None:
    return "—"
  if "error" in r:
    return "failed"
  return f"{r['tokens_per_s']:,.0f}"


def _fmt_mfu(r: dict | None) -> str:
  if r is None or "error" in r or r.get("mfu") is None:
    return "—"
  return f"{100 * r['mfu']:.1f}%"


def table(runs: list[dict]) -> str:
  """A markdown table, one line per (preset, batch, seq, dtype)."""
  jax_cols, torch_cols = [], []  # (label, {key: record})
  for run in runs:
    impl = run["implementation"]
    by_mode: dict[str, dict] = {}
    for r in run["results"]:
      key = (r["preset"], r["batch"], r["seq"], r["dtype"])
      by_mode.setdefault(r.get("mode") or "", {})[key] = r
    for mode, recs in by_mode.items():
      label = "JAX" if impl == "jaxslm" else f"torch {mode}"
      (jax_cols if impl == "jaxslm" else torch_cols).append((label, recs))

  def merged(cols):
    out: dict[str, dict] = {}
    for label, recs in cols:
      out.setdefault(label, {}).update(recs)
    return list(out.items())

  jax_cols, torch_cols = merged(jax_cols), merged(torch_cols)
  keys = []
  for _, recs in jax_cols + torch_cols:
    keys += [k for k in recs if k not in keys]
  order = {"tiny": 0, "slm26m": 1, "gpt2_124m": 2}
  keys.sort(key=lambda k: (order.get(k[0], 9), k[0], k[3], k[1], k[2]))

  head = ["preset", "batch×seq", "dtype"]
  for label, _ in jax_cols + torch_cols:
    head += [f"{label} tok/s", f"{label} MFU"]
  for jl, _ in jax_cols:
    head += [f"{jl}/{tl}" for tl, _ in torch_cols]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key in keys:
    preset, b, t, dtype = key
    row = [preset, f"{b}×{t}", dtype]
    for _, recs in jax_cols + torch_cols:
      r = recs.get(key)
      row += [_fmt_tps(r), _fmt_mfu(r)]
    for _, jrecs in jax_cols:
      for _, trecs in torch_cols:
        j, t_ = jrecs.get(key), trecs.get(key)
        ok = j and t_ and "error" not in j and "error" not in t_
        row.append(f"{j['tokens_per_s'] / t_['tokens_per_s']:.2f}×" if ok else "—")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def provenance(runs: list[dict]) -> str:
  lines = []
  for run in runs:
    versions = f"JAX {run.get('jax_version')}"
    if run.get("torch_version"):
      versions += f", torch {run['torch_version']} ({run.get('torch_threads')} threads)"
    lines.append(f"- `{os.path.basename(run['_path'])}` ({run['implementation']}): "
                 f"{run.get('device_count')} x {run.get('device_kind')}, {versions}, "
                 f"{run.get('date')}; peak {run['peak_flops_per_device'] / 1e12:.4g} TFLOP/s "
                 f"per device ({run.get('peak_flops_source')})\n  `{run.get('command')}`")
  errors = [(run["_path"], r) for run in runs for r in run["results"] if "error" in r]
  for path, r in errors:
    lines.append(f"- {r['preset']} [{r.get('mode')}] failed in `{os.path.basename(path)}`: "
                 f"{r['error'].splitlines()[0][:300]}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("jsons", nargs="+", help="benchmark JSONs (jaxslm and/or torch)")
  p.add_argument("--out", default="", help="also write the markdown here")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  runs = load(args.jsons)
  text = (table(runs) + "\n\nJAX/torch columns: ratio of tokens/s (> 1: JAX is faster).\n\n"
          + provenance(runs) + "\n")
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text)
    print(f"Wrote {args.out}")
  return text


if __name__ == "__main__":
  main()
