"""GGUF import of real checkpoints: conversion time, and jaxslm against
transformers on the same GGUF file (prompt ids, logits, greedy continuations).

    ../shared/tools/fetch-gguf.sh /work/models/gguf       # SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M
    python benchmarks/gguf_parity.py --gguf-dir /work/models/gguf \\
        --out benchmarks/results/cpu_gguf_parity.json

For each .gguf file: `launch/convert.py gguf2jax` runs in its own process
(wall clock and peak RSS of that process; float32). Then jaxslm loads the
checkpoint and transformers loads the GGUF file itself
(`AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)`,
`AutoTokenizer` likewise), and for each prompt the script records whether
the prompt's token ids are equal (BOS as each tokenizer adds it), the
largest logit difference over the prompt, and both greedy continuations of
`--max-new-tokens` tokens (ids and text; EOS neither stops nor is masked), with the
first position where they differ. A model with a chat template also gets its
first prompt as a chat (jaxslm's `encode_chat` against transformers'
`apply_chat_template`). `--export` also runs `jax2hf` on the checkpoint and
loads the export in transformers: its class, its logits on the first prompt
against transformers' model of the GGUF file, and its tokenizer's ids.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "Question: What is 12 times 7?\nAnswer:",
    "The capital of France is",
    "def fibonacci(n):",
]

_TIMED = """
import resource, subprocess, sys, time, json
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def timed_convert(path: str, out: str, dtype: str) -> dict:
  cmd = [sys.executable, os.path.join(ROOT, "launch", "convert.py"), "gguf2jax", "--gguf", path,
         "--out", out, "--dtype", dtype]
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  res = subprocess.run([sys.executable, "-c", _TIMED, *cmd], capture_output=True, text=True,
                       env=env)
  result = json.loads(res.stdout.strip().splitlines()[-1])
  result["load_average_1min_after"] = os.getloadavg()[0]   # other processes' CPU demand
  if result["rc"]:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
  return {"command": " ".join(["python", "launch/convert.py", *cmd[2:]]), **result}


def first_difference(a: list[int], b: list[int]) -> int | None:
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def compare(path: str, ckpt: str, max_new_tokens: int, export_dir: str | None = None) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers

  import jaxslm
  from jaxslm.models import Decoder

  loaded = jaxslm.load(ckpt)
  cfg, params, tok = loaded
  t = time.perf_counter()
  d, f = os.path.split(path)
  hf = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f,
                                                         dtype=torch.float32).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
  hf_load_s = time.perf_counter() - t
  forward = jax.jit(lambda p, x: Decoder(cfg).apply({"params": p}, x))
  # Greedy, not stopping at EOS and not masking it (min_new_tokens would forbid EOS);
  # the model's own generation config would add its EOS back.
  hf.generation_config.eos_token_id = None
  greedy = transformers.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=None, pad_token_id=tok.pad_id)
  cases = [("text", p) for p in PROMPTS]
  if tok.chat_template:
    cases.append(("chat", PROMPTS[0]))
  rows = []
  for kind, prompt in cases:
    if kind == "chat":
      msgs = [{"role": "user", "content": prompt}]
      ids = tok.encode_chat(msgs)
      ref_ids = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
    else:
      ids = tok.encode(prompt, add_bos=None)
      ref_ids = hf_tok(prompt)["input_ids"]
    ref_ids = [int(i) for i in ref_ids]
    with torch.no_grad():
      ref_logits = hf(torch.tensor([ids])).logits.numpy()[0]
      ref_out = hf.generate(torch.tensor([ids]), generation_config=greedy)[0, len(ids):].tolist()
    ours_logits = np.asarray(forward(params, jnp.asarray([ids])))[0]
    ours = jaxslm.generate(cfg, params, [ids], max_new_tokens=max_new_tokens, temperature=0.0,
                           eos_id=None).completions[0].tokens
    rows.append({
        "kind": kind, "prompt": prompt, "prompt_ids_equal": ids == ref_ids,
        "prompt_ids": ids, "transformers_prompt_ids": ref_ids,
        "logits_max_abs_diff": float(np.abs(ours_logits - ref_logits).max()),
        "logits_max_abs": float(np.abs(ref_logits).max()),
        "greedy_identical": list(ours) == ref_out,
        "first_difference": first_difference(list(ours), ref_out),
        "jaxslm_ids": list(ours), "transformers_ids": ref_out,
        "jaxslm_text": tok.decode(list(ours)), "transformers_text": tok.decode(ref_out)})
  export = None
  if export_dir is not None:
    from jaxslm import convert
    t = time.perf_counter()
    convert.jaxslm_to_hf(ckpt, export_dir)
    export_s = time.perf_counter() - t
    back = transformers.AutoModelForCausalLM.from_pretrained(export_dir,
                                                             dtype=torch.float32).eval()
    back_tok = transformers.AutoTokenizer.from_pretrained(export_dir)
    ids = hf_tok(PROMPTS[0])["input_ids"]
    with torch.no_grad():
      diff = (back(torch.tensor([ids])).logits - hf(torch.tensor([ids])).logits).abs().max()
    export = {"jax2hf_s": export_s, "class": type(back).__name__,
              "logits_max_abs_diff_vs_gguf_model": float(diff),
              "tokenizer_ids_equal": all(back_tok(p)["input_ids"] == hf_tok(p)["input_ids"]
                                         for p in PROMPTS)}
  return {"transformers_load_s": hf_load_s, "rows": rows, "export": export,
          "model": {"n_layers": cfg.n_layers, "d_model": cfg.d_model,
                    "vocab_size": cfg.vocab_size, "gguf": loaded.meta.get("gguf")}}


def main(argv):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--gguf-dir", default=os.environ.get("JAXSLM_GGUF_DIR", "/work/models/gguf"))
  ap.add_argument("--files", default=None, help="comma-separated .gguf paths (default: all in "
                                                "--gguf-dir)")
  ap.add_argument("--max-new-tokens", type=int, default=32)
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  ap.add_argument("--out", default=None, help="JSON results file")
  ap.add_argument("--export", action="store_true",
                  help="also jax2hf each checkpoint and load the export in transformers")
  args = ap.parse_args(argv)
  files = (args.files.split(",") if args.files
           else sorted(glob.glob(os.path.join(args.gguf_dir, "*.gguf"))))
  if not files:
    raise SystemExit(f"no .gguf files in {args.gguf_dir}; run ../shared/tools/fetch-gguf.sh "
                     f"{args.gguf_dir} first.")
  import gguf
  import jax
  import transformers
  results = {"device": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})",
             "date": datetime.date.today().isoformat(), "jax_version": jax.__version__,
             "transformers_version": transformers.__version__,
             "gguf_version": getattr(gguf, "__version__", None) or _dist_version("gguf"),
             "command": "python benchmarks/gguf_parity.py " + " ".join(argv), "files": {}}
  with tempfile.TemporaryDirectory(prefix="gguf_parity") as tmp:
    for path in files:
      name = os.path.basename(path)
      out = os.path.join(tmp, os.path.splitext(name)[0])
      conv = timed_convert(path, out, args.dtype)
      conv["file_bytes"] = os.path.getsize(path)
      entry = {"convert": conv, **compare(path, out, args.max_new_tokens,
                                          out + "-hf" if args.export else None)}
      results["files"][name] = entry
      for r in entry["rows"]:
        print(f"{name} [{r['kind']}] ids_equal={r['prompt_ids_equal']} "
              f"logits_diff={r['logits_max_abs_diff']:.2e} greedy_identical="
              f"{r['greedy_identical']} first_diff={r['first_difference']}", flush=True)
      print(f"{name}: gguf2jax {conv['wall_s']:.1f} s, peak RSS "
            f"{conv['peak_rss_bytes'] / 2**20:.0f} MiB; export {entry['export']}", flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1, ensure_ascii=False)
  return 0


def _dist_version(name: str) -> str | None:
  from importlib import metadata
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return None


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
