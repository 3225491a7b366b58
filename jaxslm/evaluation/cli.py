"""The `launch/eval.py` command: evaluate checkpoints on GSM8K, write the outputs.

Outputs under --out:
  <label>/summary.json      every metric of one checkpoint (see `evaluate_gsm8k`)
  <label>/examples.jsonl    one line per problem: question, prompt, completion,
                            extracted answer, gold, correct, category, tokens, time
  summary.json              {label: summary} for all checkpoints
  report.md, accuracy.png   side-by-side comparison with paired tests
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re

from jaxslm.errors import UserError, report
from jaxslm.evaluation import extract
from jaxslm.evaluation.gsm8k import MODES, EvalOptions, evaluate_gsm8k
from jaxslm.evaluation.report import write_report
from jaxslm.loading import load

EXAMPLES = """examples:
  python launch/eval.py --checkpoint runs/default --data ../shared/data/gsm8k --limit 200
  python launch/eval.py --checkpoint runs/base --checkpoint runs/sft --limit 500 --out runs/eval/cmp
  python launch/eval.py --checkpoint runs/base --num-fewshot 5          # lm-eval gsm8k style
  python launch/eval.py --checkpoint runs/sft --n 8 --temperature 0.7   # pass@k, maj@k
  python launch/eval.py --checkpoint runs/react --mode agent --limit 100
  python launch/eval.py --checkpoint runs/sft --problems my_problems.jsonl
  python launch/eval.py --checkpoint runs/sft --similarity-model ./all-MiniLM-L6-v2
  python launch/eval.py --checkpoint runs/sft --harness-tasks arc_easy,hellaswag --harness-limit 500
"""


def parse(argv):
  from jaxslm.data.templates import TEMPLATES
  ap = argparse.ArgumentParser(prog="launch/eval.py", description=__doc__, epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--checkpoint", action="append", required=True,
                  help="run workdir, checkpoints/ dir or step dir; repeat to compare")
  ap.add_argument("--label", action="append", default=[], help="name per checkpoint")
  ap.add_argument("--out", default="runs/eval", help="output directory")
  ap.add_argument("--data", default=None, help="local GSM8K directory (default: "
                  "$JAXSLM_GSM8K_DIR, else the hub's openai/gsm8k)")
  ap.add_argument("--problems", default=None, help="a .jsonl/.json file of problems "
                  "(question, answer with '#### N') instead of the test split")
  ap.add_argument("--config", default="main", choices=("main", "socratic"))
  ap.add_argument("--split", default="test")
  ap.add_argument("--limit", type=int, default=None,
                  help="N problems drawn at random with --seed (same N, same problems)")
  ap.add_argument("--seed", type=int, default=1234, help="subset seed")
  ap.add_argument("--mode", choices=MODES, default=None,
                  help="default: the checkpoint's training format")
  ap.add_argument("--template", choices=sorted(TEMPLATES), default=None)
  ap.add_argument("--num-fewshot", type=int, default=0)
  ap.add_argument("--fewshot-sampler", choices=("random", "first_n"), default="random")
  ap.add_argument("--max-new-tokens", type=int, default=256)
  ap.add_argument("--batch-size", type=int, default=64)
  ap.add_argument("--n", type=int, default=1, help="samples per problem")
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--top-p", type=float, default=1.0)
  ap.add_argument("--sample-seed", type=int, default=0)
  ap.add_argument("--pass-k", default="", help="comma-separated k for pass@k / maj@k")
  ap.add_argument("--extractors", default=",".join(extract.EXTRACTORS))
  ap.add_argument("--calculator", action="store_true", help="the sampler's <<expr= hook")
  ap.add_argument("--agent-max-steps", type=int, default=8)
  ap.add_argument("--add-bos", choices=("auto", "true", "false"), default="auto",
                  help="BOS before each prompt; auto: the tokenizer's add_bos_default (true "
                       "for models converted from Llama 3 / Gemma / Mistral)")
  ap.add_argument("--quantize", choices=("none", "int8"), default="none",
                  help="int8: evaluate with int8 projection kernels (jaxslm.quant)")
  ap.add_argument("--no-perplexity", action="store_true")
  ap.add_argument("--no-rouge", action="store_true")
  ap.add_argument("--similarity-model", default="auto",
                  help="semantic similarity of completions and references: 'auto' (when "
                  "jaxslm[similarity] is installed), 'off', a model directory or hub name")
  ap.add_argument("--harness-tasks", default="",
                  help="also run these lm-evaluation-harness tasks (comma-separated; needs "
                  "jaxslm[lm-eval]); their numbers go into the same report")
  ap.add_argument("--harness-limit", type=float, default=None,
                  help="examples per harness task (an int, or a fraction < 1)")
  ap.add_argument("--harness-fewshot", type=int, default=None,
                  help="few-shot examples for harness tasks (default: each task's own)")
  ap.add_argument("--harness-include-path", default=None,
                  help="directory of extra task YAMLs (the harness's --include_path)")
  ap.add_argument("--harness-batch-size", type=int, default=32)
  ap.add_argument("--harness-max-gen-toks", type=int, default=256)
  ap.add_argument("--harness-chat-template", action="store_true",
                  help="apply the tokenizer's chat template to harness prompts")
  ap.add_argument("--ppl-text", action="append", default=[],
                  help="also report the perplexity of this text file (repeatable)")
  return ap.parse_args(argv)


def _labels(checkpoints, labels):
  if labels and len(labels) != len(checkpoints):
    raise UserError(f"{len(labels)} --label for {len(checkpoints)} --checkpoint; give one "
                    "label per checkpoint or none.")
  out, seen = [], set()
  for i, ckpt in enumerate(checkpoints):
    name = labels[i] if labels else (os.path.basename(os.path.normpath(ckpt)) or f"ckpt{i}")
    name = re.sub(r"[^\w.-]+", "_", name)
    base, j = name, 1
    while name in seen:
      j += 1
      name = f"{base}-{j}"
    seen.add(name)
    out.append(name)
  return out


def _options(args) -> EvalOptions:
  try:
    ks = tuple(int(k) for k in args.pass_k.split(",") if k.strip())
  except ValueError:
    raise UserError(f"--pass-k {args.pass_k!r}: expected comma-separated ints, e.g. 1,4,8.")
  extractors = tuple(e.strip() for e in args.extractors.split(",") if e.strip())
  extract.check_extractors(extractors)
  return EvalOptions(
      mode=args.mode, template=args.template, num_fewshot=args.num_fewshot,
      fewshot_sampler=args.fewshot_sampler, max_new_tokens=args.max_new_tokens,
      batch_size=args.batch_size, n=args.n, temperature=args.temperature, top_p=args.top_p,
      seed=args.sample_seed, pass_k=ks, extractors=extractors, calculator=args.calculator,
      rouge=not args.no_rouge, perplexity=not args.no_perplexity,
      similarity=args.similarity_model,
      agent_max_steps=args.agent_max_steps,
      add_bos={"auto": None, "true": True, "false": False}[args.add_bos])


def _load_problems(args, log):
  from jaxslm.data import gsm8k
  split = gsm8k.load(args.split, args.config, path=args.problems or args.data)
  log(split.describe())
  problems, note = gsm8k.select(split.examples, args.limit, seed=args.seed)
  notes = [note] if note else []
  if note:
    log(note)
  dataset = {"source": split.source, "split": split.name, "config": args.config,
             "rows": split.rows, "skipped": split.num_skipped,
             "skipped_examples": [list(s) for s in split.skipped[:20]],
             "limit": args.limit, "subset_seed": args.seed, "indices_sha": _digest(problems)}
  if split.num_skipped:
    notes.append(f"{split.num_skipped} malformed rows skipped (see dataset.skipped_examples)")
  train = None
  if args.num_fewshot:
    if args.data and not os.path.isdir(args.data):
      raise UserError(f"--num-fewshot needs exemplars from the train split: --data "
                      f"{args.data!r} is a file; give the GSM8K directory (with train.jsonl).")
    train_split = gsm8k.load("train", args.config, path=args.data)
    if train_split.source == split.source:
      raise UserError(f"few-shot exemplars would come from the evaluated problems "
                      f"({split.source}); give the train split's directory with --data.")
    log(train_split.describe())
    notes.append("few-shot exemplars: " + train_split.describe())
    train = train_split.examples
  return problems, train, dataset, notes


def _digest(problems) -> str:
  import hashlib
  return hashlib.sha256(",".join(str(p.index) for p in problems).encode()).hexdigest()[:16]


def _finite(obj):
  """JSON-safe: NaN and infinities (a stderr of one problem, say) become null."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def _write_jsonl(path, rows):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in rows:
      f.write(json.dumps(_finite(r), ensure_ascii=False, allow_nan=False) + "\n")
  os.replace(tmp, path)


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_finite(obj), f, indent=2, ensure_ascii=False, allow_nan=False)
  os.replace(tmp, path)


def _harness(args, ckpt, log) -> dict:
  from jaxslm.evaluation.harness import evaluate_tasks
  limit = args.harness_limit
  if limit is not None and limit >= 1:
    limit = int(limit)
  return evaluate_tasks(ckpt, args.harness_tasks.split(","), limit=limit,
                        num_fewshot=args.harness_fewshot, include_path=args.harness_include_path,
                        batch_size=args.harness_batch_size,
                        max_gen_toks=args.harness_max_gen_toks,
                        apply_chat_template=args.harness_chat_template, seed=args.sample_seed,
                        log=log)


def run(args, log=print) -> dict:
  opts = _options(args)
  labels = _labels(args.checkpoint, args.label)
  problems, train, dataset, notes = _load_problems(args, log)
  entries, summaries = [], {}
  for label, ckpt in zip(labels, args.checkpoint):
    log(f"{label}: evaluating {ckpt} on {len(problems)} problems")
    ckpt = ckpt if args.quantize == "none" else load(ckpt, quantize=args.quantize)
    result = evaluate_gsm8k(ckpt, problems, opts, train_pool=train, log=log)
    s = result.summary
    s.update(label=label, dataset=dataset, notes=list(notes) + s.get("notes", []))
    if args.ppl_text:
      from jaxslm.evaluation.perplexity import text_perplexity
      s["text_perplexity"] = {}
      for path in args.ppl_text:
        with open(path) as f:
          s["text_perplexity"][path] = text_perplexity(ckpt, f.read())
        log(f"{label}: perplexity of {path}: {s['text_perplexity'][path]['ppl']:.2f}")
    if args.harness_tasks:
      s["harness"] = _harness(args, ckpt, log)
    out = os.path.join(args.out, label)
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "summary.json"), s)
    _write_jsonl(os.path.join(out, "examples.jsonl"), result.records)
    a = s["accuracy"]
    log(f"{label}: accuracy {100 * a['mean']:.1f}% ± {100 * a['stderr']:.1f} "
        f"({a['n']} samples), written to {out}")
    entries.append((label, s, result.records))
    summaries[label] = s
  _write_json(os.path.join(args.out, "summary.json"), summaries)
  report = write_report(entries, args.out)
  log(f"report: {report}")
  return summaries


def main(argv) -> int:
  args = parse(argv)
  try:
    run(args)
  except (UserError, FileNotFoundError) as e:
    return report(e)
  return 0
