"""Every GPU measurement in one command: one JSON and one Markdown table.

    # on one H100 / H200, from the repository root (GSM8K and the tiktoken ranks
    # travel with the working tree as untracked files under benchmarks/data/):
    python benchmarks/gpu_suite.py --data benchmarks/data/gsm8k \\
        --tiktoken-cache benchmarks/data/tiktoken_cache --out benchmarks/results/gpu_suite
    # the same code on CPU at tiny sizes (tests/test_benchmarks.py runs it):
    python benchmarks/gpu_suite.py --smoke --out /tmp/gpu_suite_smoke

Parts, each the repository's own benchmark script in a subprocess with its own
timeout (a failure or timeout is recorded and the suite goes on):

  pretrain_jax    pretrain_throughput.py: slm26m and gpt2_124m, bf16, B x 1024 tokens (MFU)
  pretrain_torch  torch_reference.py --mode eager: the PyTorch reference, same shapes
  decode          sample_throughput.py: llama500m (509M, random weights), B = 1 and 64,
                  bf16 and int8, bandwidth-bound fraction (spec bandwidth), beside
                  transformers' generate
  eval            eval_gsm8k.py: the full GSM8K test split, slm26m, 256 new tokens
  grpo            grpo_model.py, then one GRPO step of grpo_throughput.py (jaxslm) and
                  grpo_trl.py (TRL) on the same model and settings

`--smoke` checks that every flag the smoke and the full commands pass is one
its script accepts, and runs pretrain_jax and decode (jaxslm, fp32 and int8) at tiny
sizes; the other parts are only flag-checked there (tests/test_benchmarks.py
runs eval_gsm8k.py at tiny size on its own; the PyTorch, transformers and TRL
imports alone take longer than a test should). `--budget-s` stops starting parts once the suite has run that long.
Needs what the GPU machine has: JAX with CUDA, flax, optax, orbax, chex,
tiktoken, sentencepiece, torch, transformers (and trl for the TRL side).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_args(argv):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="directory: suite.json, suite.md, one JSON per part")
  ap.add_argument("--data", default="benchmarks/data/gsm8k", help="local GSM8K directory")
  ap.add_argument("--tiktoken-cache", default=os.environ.get("TIKTOKEN_CACHE_DIR", ""),
                  help="directory of tiktoken's cached ranks (GPT-2 vocabulary, offline)")
  ap.add_argument("--parts", default="pretrain_jax,pretrain_torch,decode,eval,grpo")
  ap.add_argument("--budget-s", type=float, default=480.0)
  ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (the test suite)")
  return ap.parse_args(argv)


def plans(args) -> dict[str, list[tuple[list[str], float]]]:
  """part -> [(script + arguments, timeout seconds; 0: --smoke checks the flags only)];
  each writes its JSON to $OUT/<part>*.json."""
  o = lambda name: os.path.join(args.out, name)
  if args.smoke:
    data = _smoke_data(args.out)
    return {
        "pretrain_jax": [(["pretrain_throughput.py", "--presets", "tiny", "--batch", "2",
                           "--seq", "32", "--steps", "2", "--warmup", "1",
                           "--out", o("pretrain_jax.json")], 300)],
        "pretrain_torch": [(["torch_reference.py", "--presets", "tiny", "--batch", "2",
                             "--seq", "32", "--steps", "2", "--warmup", "1", "--mode", "eager",
                             "--out", o("pretrain_torch.json")], 0)],
        "decode": [(["sample_throughput.py", "--smoke", "--quantize", "none,int8,int8-dynamic",
                     "--frameworks", "jaxslm", "--out", o("decode.json")], 300)],
        "eval": [(["eval_gsm8k.py", "--data", data, "--preset", "tiny", "--max-new-tokens", "8",
                   "--batch-size", "2", "--no-metrics", "--out", o("eval.json")], 0)],
        "grpo": [(cmd, 0) for cmd, _ in _grpo_plan(args, "slm26m", 1, 2, 16, 2)],
    }
  shapes = ["--batch", "16", "--seq", "1024", "--steps", "10", "--warmup", "2",
            "--dtype", "bfloat16"]
  return {
      "pretrain_jax": [(["pretrain_throughput.py", "--presets", "slm26m,gpt2_124m", *shapes,
                         "--out", o("pretrain_jax.json")], 180)],
      "pretrain_torch": [(["torch_reference.py", "--presets", "slm26m,gpt2_124m", *shapes,
                           "--mode", "eager", "--out", o("pretrain_torch.json")], 150)],
      "decode": [(["sample_throughput.py", "--presets", "llama500m", "--batches", "1,64",
                   "--dtype", "bfloat16", "--quantize", "none,int8,int8-dynamic", "--prompt-len",
                   "128", "--new-tokens", "128", "--repeats", "3", "--out", o("decode.json")],
                  300)],
      "eval": [(["eval_gsm8k.py", "--data", args.data, "--preset", "slm26m",
                 "--max-new-tokens", "256", "--batch-size", "256", "--dtype", "bfloat16",
                 "--out", o("eval.json")], 180)],
      "grpo": _grpo_plan(args, "slm26m", 8, 8, 128, 3),
  }


def _grpo_plan(args, preset, prompts, g, new, steps):
  model = os.path.join(args.out, "grpo_model")
  same = ["--model-dir", model, "--prompts-per-step", str(prompts), "--G", str(g),
          "--max-new-tokens", str(new), "--steps", str(steps)]
  return [(["grpo_model.py", "--preset", preset, "--out", model, "--force"], 120),
          (["grpo_throughput.py", *same, "--workdir", os.path.join(args.out, "grpo_run"),
            "--out", os.path.join(args.out, "grpo_jax.json")], 150),
          (["grpo_trl.py", *same, "--out", os.path.join(args.out, "grpo_trl.json")], 150)]


def _smoke_data(out: str) -> str:
  """4 GSM8K-format problems (made up), so --smoke needs no dataset."""
  d = os.path.join(out, "smoke_gsm8k")
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "test.jsonl"), "w") as f:
    for i in range(4):
      f.write(json.dumps({"question": f"Tom has {i} apples and buys 2 more. How many?",
                          "answer": f"{i}+2=<<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"}) + "\n")
  return d


def unknown_flags(all_plans: list[dict], env) -> dict[str, list[str]]:
  """script -> the flags some command passes it that its --help does not list
  (one --help per script, over the smoke and the full plans alike)."""
  flags: dict[str, set] = {}
  for plan in all_plans:
    for steps in plan.values():
      for cmd, _ in steps:
        flags.setdefault(cmd[0], set()).update(a for a in cmd[1:] if a.startswith("--"))
  out = {}
  for script, wanted in flags.items():
    res = subprocess.run([sys.executable, os.path.join(HERE, script), "--help"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    text = res.stdout + res.stderr
    out[script] = sorted(f for f in wanted if f not in text) if res.returncode == 0 else [
        f"--help exited {res.returncode}: {text[-300:]}"]
  return out


def run_part(name, steps, args, env, t_start, unknown=None) -> dict:
  rec = {"part": name, "commands": [], "ok": True}
  for cmd, timeout in steps:
    entry = {"command": " ".join(["python", f"benchmarks/{cmd[0]}", *cmd[1:]])}
    rec["commands"].append(entry)
    left = args.budget_s - (time.perf_counter() - t_start)
    if args.smoke:
      entry["unknown_flags"] = unknown[cmd[0]]
      rec["ok"] &= not entry["unknown_flags"]
      if not timeout:
        continue
    if left < 20:
      entry["skipped"] = f"suite budget of {args.budget_s:.0f} s spent"
      rec["ok"] = False
      continue
    t0 = time.perf_counter()
    try:
      res = subprocess.run([sys.executable, os.path.join(HERE, cmd[0]), *cmd[1:]], env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=min(timeout, left))
      entry.update(rc=res.returncode, tail=(res.stdout + res.stderr)[-2000:])
    except subprocess.TimeoutExpired:
      entry.update(rc=None, tail=f"timed out after {min(timeout, left):.0f} s")
    entry["wall_s"] = round(time.perf_counter() - t0, 1)
    rec["ok"] &= entry["rc"] == 0
  return rec


def _load(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def summary_rows(out: str) -> list[str]:
  """Markdown rows from the parts' own JSON files."""
  rows = []
  pj, pt = _load(os.path.join(out, "pretrain_jax.json")), _load(os.path.join(out, "pretrain_torch.json"))
  for side, data in (("jaxslm", pj), ("torch eager", pt)):
    for r in (data or {}).get("results", []):
      if "tokens_per_s" in r:
        mfu = r.get("mfu")
        rows.append(f"| pretrain {r.get('preset')} B{r.get('batch')}×{r.get('seq')} | {side} | "
                    f"{r['tokens_per_s']:,.0f} tok/s" + (f", MFU {100 * mfu:.1f}%" if mfu else "")
                    + " |")
  dec = _load(os.path.join(out, "decode.json"))
  for r in (dec or {}).get("results", []):
    if r.get("decode_tok_s"):
      bound = r.get("bound_fraction")
      rows.append(f"| decode {r['preset']} B{r['batch']} | {r['framework']} | "
                  f"{r['decode_tok_s']:,.0f} tok/s"
                  + (f", {100 * bound:.0f}% of the bandwidth bound" if bound else "") + " |")
  ev = _load(os.path.join(out, "eval.json"))
  if ev and "wall_s" in ev:
    rows.append(f"| GSM8K eval, {ev.get('problems')} problems | jaxslm | {ev['wall_s']:.1f} s |")
  for side, fname in (("jaxslm", "grpo_jax.json"), ("TRL", "grpo_trl.json")):
    g = _load(os.path.join(out, fname))
    if g:
      step = g.get("step_s_median") or g.get("median_step_s") or g.get("step_s")
      rows.append(f"| GRPO step | {side} | {step if step is not None else 'see ' + fname} |")
  return rows


def main(argv=None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  os.makedirs(args.out, exist_ok=True)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  if args.tiktoken_cache:
    env["TIKTOKEN_CACHE_DIR"] = os.path.abspath(args.tiktoken_cache)
  all_plans = plans(args)
  parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  unknown = [p for p in parts if p not in all_plans]
  if unknown:
    raise SystemExit(f"--parts: unknown {unknown}; choose from {', '.join(all_plans)}.")
  if not args.smoke and "eval" in parts and not os.path.exists(os.path.join(args.data, "test.jsonl")):
    raise SystemExit(f"--data {args.data!r} has no test.jsonl: copy the GSM8K directory there "
                     "(untracked files travel with the working tree) or pass --parts without eval.")
  import jax
  result = {"suite": "gpu_suite", "smoke": args.smoke,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/gpu_suite.py", *(argv or sys.argv[1:])]),
            "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "jax": jax.__version__, "python": platform.python_version(), "parts": []}
  t_start = time.perf_counter()
  unknown = None
  if args.smoke:   # the full run's command lines are checked too, so they cannot rot
    unknown = unknown_flags([all_plans, plans(argparse.Namespace(**{**vars(args), "smoke": False}))],
                            env)
  for name in parts:
    rec = run_part(name, all_plans[name], args, env, t_start, unknown)
    result["parts"].append(rec)
    print(f"{name}: {'ok' if rec['ok'] else 'FAILED'} "
          f"({sum(c.get('wall_s', 0) for c in rec['commands']):.0f} s)", flush=True)
  result["wall_s"] = round(time.perf_counter() - t_start, 1)
  table = ["| measurement | framework | result |", "|---|---|---|", *summary_rows(args.out)]
  result["markdown_table"] = "\n".join(table)
  with open(os.path.join(args.out, "suite.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(args.out, "suite.md"), "w") as f:
    f.write(f"{result['device']} ({result['backend']}), JAX {result['jax']}, {result['date']}, "
            f"{result['wall_s']:.0f} s\n\n`{result['command']}`\n\n{result['markdown_table']}\n")
  print(result["markdown_table"], flush=True)
  return result


if __name__ == "__main__":
  main()
