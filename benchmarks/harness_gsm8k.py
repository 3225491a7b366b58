"""lm-evaluation-harness's own 5-shot `gsm8k` task, jaxslm backend beside the `hf` backend, same weights.

  python benchmarks/harness_gsm8k.py --checkpoint runs/smollm2 \
      --gguf models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --data ../shared/data/gsm8k \
      --limit 100 --batch 8 --out benchmarks/results/cpu_harness_gsm8k.json

The task is the harness's `gsm8k` config (5-shot, greedy, its "Question: ...
Answer:" layout, its strict-match and flexible-extract filters) with its data
pointed at a local GSM8K directory (`dataset_path: json`). The jaxslm backend
reads `--checkpoint` (the GGUF file imported with `gguf2jax`); the `hf` backend
reads the same GGUF file through transformers (`gguf_file=`), so both run the
same dequantized weights in float32, at the same batch size. With `--cache DIR`
each side keeps its responses in the harness's cache as each batch ends, so a
long run that stops (a full 1,319-document run takes hours on a CPU) resumes when
run again; the wall time then counts only what was generated in that run, and
no speed ratio is given. Each side runs in
its own process (one after the other), so its wall time and peak resident
memory are its own. Reported: strict and flexible exact match ± stderr per
side, wall time and its ratio, peak RSS, and the share of documents whose
generations are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def task_dir(data: str, root: str) -> str:
  """An include directory holding `gsm8k_local`: the harness's gsm8k config on local files."""
  import lm_eval
  harness_yaml = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "gsm8k", "gsm8k.yaml")
  data = os.path.abspath(data)
  for split in ("train", "test"):
    if not os.path.isfile(os.path.join(data, f"{split}.jsonl")):
      raise SystemExit(f"--data {data}: no {split}.jsonl (a GSM8K directory, e.g. "
                       "../shared/data/gsm8k)")
  with open(os.path.join(root, "gsm8k_local.yaml"), "w") as f:
    f.write(f"include: {harness_yaml}\ntask: gsm8k_local\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n"
            f"    train: {data}/train.jsonl\n    test: {data}/test.jsonl\n")
  return root


def cache_path(args) -> str | None:
  """The harness's response cache for this side (None without --cache): its name
  hashes what the responses depend on (the backend, the weights' file, its size and
  time, the batch size), so another model or file never reads this one's."""
  if not args.cache:
    return None
  import hashlib
  weights = os.path.abspath(args.checkpoint if args.side == "jaxslm" else args.gguf)
  files = [weights] if os.path.isfile(weights) else sorted(
      os.path.join(d, f) for d, _, fs in os.walk(weights) for f in fs)
  h = hashlib.sha256(f"{args.side}|{weights}|batch {args.batch}|256 new tokens|float32".encode())
  for f in files:
    st = os.stat(f)
    h.update(f"|{os.path.relpath(f, weights)}:{st.st_size}:{st.st_mtime_ns}".encode())
  return os.path.join(os.path.abspath(args.cache), f"{args.side}-{h.hexdigest()[:16]}")


def run_side(args) -> dict:
  """One backend, in this process."""
  import lm_eval
  from jaxslm.evaluation.harness import TaskManager
  t0 = time.perf_counter()
  if args.side == "jaxslm":
    from jaxslm.evaluation.lm_eval_backend import JaxslmLM
    lm = JaxslmLM(checkpoint=args.checkpoint, batch_size=args.batch, max_gen_toks=256,
                  dtype="float32")
  else:
    import torch
    from lm_eval.models.huggingface import HFLM
    torch.set_num_threads(os.cpu_count() or 1)
    lm = HFLM(pretrained=os.path.dirname(os.path.abspath(args.gguf)),
              gguf_file=os.path.basename(args.gguf), batch_size=args.batch, dtype="float32",
              device="cpu")   # its max_gen_toks is 256 as well
  load_s = time.perf_counter() - t0
  cache, cached = cache_path(args), 0
  if cache:
    from sqlitedict import SqliteDict
    if os.path.exists(cache + "_rank0.db"):
      try:
        with SqliteDict(cache + "_rank0.db", flag="r") as d:
          cached = len(d)
      except Exception as e:   # noqa: BLE001 - sqlite's errors vary
        raise SystemExit(f"--cache: {cache}_rank0.db is not a readable response cache ({e}); "
                         "delete it to start over") from None
    print(f"{args.side}: response cache {cache}_rank0.db ({cached} responses in it)", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    t1 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=["gsm8k_local"], limit=args.limit,
                                  num_fewshot=5, task_manager=TaskManager(task_dir(args.data, tmp)),
                                  log_samples=True, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0, fewshot_random_seed=0, use_cache=cache)
    run_s = time.perf_counter() - t1
  res = out["results"]["gsm8k_local"]
  # one entry per document and filter (strict-match, flexible-extract): the
  # generation is the same for both
  by_doc = {s["doc_id"]: s for s in out["samples"]["gsm8k_local"]}
  samples = [by_doc[k] for k in sorted(by_doc)]
  return {
      "side": args.side, "load_s": load_s, "run_s": run_s,
      "strict": res["exact_match,strict-match"],
      "strict_stderr": res["exact_match_stderr,strict-match"],
      "flexible": res["exact_match,flexible-extract"],
      "flexible_stderr": res["exact_match_stderr,flexible-extract"],
      "n": len(samples), "cached_before": cached,
      "generations": [s["resps"][0][0] for s in samples],
      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--checkpoint", required=True, help="the jaxslm import of --gguf")
  ap.add_argument("--gguf", required=True, help="the GGUF file (the hf backend reads it)")
  ap.add_argument("--data", required=True, help="local GSM8K directory")
  ap.add_argument("--limit", type=int, default=100, help="documents (0: all 1,319)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--sides", default="jaxslm,hf")
  ap.add_argument("--side", help=argparse.SUPPRESS)      # internal: run one side, print JSON
  ap.add_argument("--out", default="benchmarks/results/cpu_harness_gsm8k.json")
  ap.add_argument("--cache", help="a directory for the harness's response cache: each batch's "
                  "generations are kept there, so a stopped run, run again, generates only the "
                  "rest (its wall time then counts that rest only)")
  args = ap.parse_args(argv)
  args.limit = args.limit or None
  if args.side:
    print("\nRESULT " + json.dumps(run_side(args)), flush=True)
    return 0
  sides = {}
  for side in args.sides.split(","):
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--checkpoint",
           args.checkpoint, "--gguf", args.gguf, "--data", args.data,
           "--limit", str(args.limit or 0), "--batch", str(args.batch),
           *(["--cache", args.cache] if args.cache else [])]
    print(f"{side}: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(proc.stdout[-3000:] + proc.stderr[-3000:])
      raise SystemExit(f"{side} failed (exit {proc.returncode})")
    sides[side] = json.loads(lines[-1][len("RESULT "):])
    s = sides[side]
    print(f"  strict {100 * s['strict']:.1f}% ± {100 * s['strict_stderr']:.1f}, flexible "
          f"{100 * s['flexible']:.1f}% ± {100 * s['flexible_stderr']:.1f} on {s['n']} documents; "
          f"{s['run_s']:.0f} s" + (f" (for the {s['n'] - s['cached_before']} not in the cache)"
                                  if s.get("cached_before") else "")
          + f"; peak RSS {s['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
  result = {"command": " ".join(["python", "benchmarks/harness_gsm8k.py", *(argv or sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "settings": vars(args), "sides": sides}
  if {"jaxslm", "hf"} <= set(sides):
    a, b = sides["jaxslm"]["generations"], sides["hf"]["generations"]
    result["identical_generations"] = sum(x == y for x, y in zip(a, b)) / max(len(a), 1)
    print(f"identical generations: {100 * result['identical_generations']:.0f}%")
    if not any(s.get("cached_before") for s in sides.values()):   # else the times are partial
      result["jaxslm_speedup"] = sides["hf"]["run_s"] / sides["jaxslm"]["run_s"]
      print(f"jaxslm / hf speed: {result['jaxslm_speedup']:.2f}x")
  import jax
  import lm_eval
  result.update(jax=jax.__version__, lm_eval=lm_eval.__version__)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
