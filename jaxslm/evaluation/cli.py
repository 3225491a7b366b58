"""The `launch/eval.py` command: evaluate checkpoints on GSM8K, write the outputs.

Outputs under --out:
  <label>/summary.json      every metric of one checkpoint (see `evaluate_gsm8k`)
  <label>/progress.jsonl    while it runs: the problems done, read back when the same
                            command runs again after a stop (removed when done)
  <label>/examples.jsonl    one line per problem: question, prompt, completion,
                            extracted answer, gold, correct, category, tokens, time
  summary.json              {label: summary} for all checkpoints
  report.md, accuracy.png   side-by-side comparison with paired tests
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re

from jaxslm.errors import UserError, report
from jaxslm.evaluation import budget, extract
from jaxslm.evaluation.gsm8k import MODES, EvalOptions, evaluate_gsm8k
from jaxslm.evaluation.progress import Progress
from jaxslm.evaluation.report import write_report
from jaxslm.loading import load

EXAMPLES = """examples:
  python launch/eval.py --checkpoint runs/default --data ../shared/data/gsm8k --limit 200
  python launch/eval.py --checkpoint runs/base --checkpoint runs/sft --limit 500 --out runs/eval/cmp
  python launch/eval.py --checkpoint runs/base --num-fewshot 5          # lm-eval gsm8k style
  python launch/eval.py --checkpoint runs/sft --n 8 --temperature 0.7   # pass@k, maj@k
  python launch/eval.py --checkpoint runs/react --mode agent --limit 100
  python launch/eval.py --checkpoint runs/sft --problems my_problems.jsonl
  python launch/eval.py --checkpoint runs/sft_synth --checkpoint runs/grpo_synth --synthetic 200 \
      --template structured      # held-out synthetic problems, paired
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
  ap.add_argument("--synthetic", type=int, default=0, metavar="N",
                  help="N held-out synthetic problems (jaxslm.data.synthetic from index "
                  "1,000,000: never trained on) instead of GSM8K")
  ap.add_argument("--synthetic-max-steps", type=int, default=4,
                  help="--synthetic: at most this many reasoning steps per problem")
  ap.add_argument("--synthetic-seed", type=int, default=0, help="--synthetic: generator seed")
  ap.add_argument("--config", default="main", choices=("main", "socratic"))
  ap.add_argument("--split", default="test")
  ap.add_argument("--limit", type=int, default=None,
                  help="N >= 1 problems drawn at random with --seed (same N, same problems); "
                  "leave it out for the whole split")
  ap.add_argument("--seed", type=int, default=1234, help="subset seed")
  ap.add_argument("--mode", choices=MODES, default=None,
                  help="default: the checkpoint's training format")
  ap.add_argument("--template", choices=sorted(TEMPLATES), default=None)
  ap.add_argument("--num-fewshot", type=int, default=0)
  ap.add_argument("--fewshot-sampler", choices=("random", "first_n"), default="random")
  ap.add_argument("--max-new-tokens", type=int, default=256,
                  help="at most this many new tokens per completion; never more than the "
                  "context left after the prompt")
  ap.add_argument("--min-budget", type=int, default=16,
                  help="room a prompt must leave in the context; longer prompts are handled "
                  "by --long-prompts")
  ap.add_argument("--long-prompts", choices=budget.LONG_PROMPTS, default="skip",
                  help="a prompt too long for the context: skip (scored wrong, counted), "
                  "truncate (keep its last tokens, counted) or error")
  ap.add_argument("--batch-size", type=int, default=64, help="rows per generate call, at most")
  ap.add_argument("--token-budget", default="auto",
                  help="rows x KV-cache slots per generate call, at most: long prompts get "
                       "smaller batches; auto: from the device's free memory; 0: rows only")
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
  ap.add_argument("--quantize", choices=("none", "int8", "int8-dynamic"), default="none",
                  help="int8: evaluate with int8 projection kernels (weight-only); int8-dynamic: "
                       "activations and head in int8 too (docs/inference.md)")
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
  ap.add_argument("--tensorboard", action="store_true",
                  help="also write each checkpoint's scalar results as TensorBoard event files "
                  "in OUT/LABEL/tensorboard (needs tensorboardX)")
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
      min_budget=args.min_budget, long_prompts=args.long_prompts,
      batch_size=args.batch_size, token_budget=_token_budget(args.token_budget), n=args.n, temperature=args.temperature, top_p=args.top_p,
      seed=args.sample_seed, pass_k=ks, extractors=extractors, calculator=args.calculator,
      rouge=not args.no_rouge, perplexity=not args.no_perplexity,
      similarity=args.similarity_model,
      agent_max_steps=args.agent_max_steps,
      add_bos={"auto": None, "true": True, "false": False}[args.add_bos])


def _token_budget(value) -> int | None:
  """--token-budget: "auto" (None: from the device's memory) or a count >= 0."""
  if str(value).strip().lower() == "auto":
    return None
  try:
    n = int(value)
  except ValueError:
    n = -1
  if n < 0:
    raise UserError(f"--token-budget {value!r}: expected auto, 0 (rows only) or a positive "
                    "number of cache slots (rows x tokens), e.g. 131072.")
  return n


def _synthetic_problems(args, log):
  """Held-out synthetic problems (the ones GRPO and fine-tuning evaluate on), and
  training-range ones as few-shot exemplars."""
  from jaxslm.data.gsm8k import Example
  from jaxslm.data.synthetic import HELDOUT_OFFSET, SyntheticMath
  gen = SyntheticMath(args.synthetic_seed, max_steps=args.synthetic_max_steps)

  def examples(start, n):
    return [Example(start + i, p.question, p.answer, str(p.final_answer))
            for i, p in ((i, gen.problem(start + i)) for i in range(n))]
  problems = examples(HELDOUT_OFFSET, args.synthetic)
  source = (f"synthetic (seed {args.synthetic_seed}, at most {args.synthetic_max_steps} steps, "
            f"indices {HELDOUT_OFFSET}..{HELDOUT_OFFSET + args.synthetic - 1})")
  log(f"{args.synthetic} held-out synthetic problems: {source}")
  dataset = {"source": source, "split": "held-out", "rows": args.synthetic, "skipped": 0,
             "indices_sha": _digest(problems)}
  train = examples(0, max(50, 8 * args.num_fewshot)) if args.num_fewshot else None
  return problems, train, dataset, []


def _load_problems(args, log):
  from jaxslm.data import gsm8k
  if args.synthetic:
    return _synthetic_problems(args, log)
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


def check_inputs(args, opts: EvalOptions) -> None:
  """Everything the run will need, checked before any work, so a bad second
  --checkpoint (or --ppl-text, or --limit) fails now, not after the first
  checkpoint's evaluation: each checkpoint resolves to a step directory whose
  meta reads and whose training format fits the options."""
  from jaxslm.checkpoint import read_step_meta, resolve_step_dir
  from jaxslm.evaluation.gsm8k import resolve_options
  if args.synthetic < 0:
    raise UserError(f"--synthetic {args.synthetic} is invalid: expected a number of problems "
                    ">= 1.")
  if args.synthetic and (args.data or args.problems or args.limit is not None):
    raise UserError("--synthetic N chooses the problems itself; leave out --data, --problems "
                    "and --limit (or drop --synthetic to evaluate on GSM8K).")
  if args.limit is not None and args.limit < 1:
    raise UserError(f"--limit {args.limit} is invalid: expected a number of problems >= 1; "
                    "leave --limit out to evaluate the whole split.")
  for path in args.ppl_text:
    if not os.path.isfile(path):
      raise UserError(f"--ppl-text {path!r} is not a file (cwd {os.getcwd()!r}); give the path "
                      "of a text file.")
  if args.harness_tasks and importlib.util.find_spec("lm_eval") is None:
    raise UserError("--harness-tasks needs lm-evaluation-harness: pip install 'jaxslm[lm-eval]' "
                    "(or pip install lm-eval), or drop --harness-tasks.")
  for ckpt in args.checkpoint:
    step_dir = resolve_step_dir(ckpt)   # FileNotFoundError naming the path
    try:
      meta = read_step_meta(step_dir)
    except Exception as e:  # noqa: BLE001 (Orbax raises many kinds for a damaged directory)
      raise UserError(f"--checkpoint {ckpt!r}: cannot read its meta in {step_dir!r} "
                      f"({type(e).__name__}: {e}); is it a complete jaxslm checkpoint?") from e
    if "lora" in meta and "model" not in meta:
      raise UserError(f"--checkpoint {ckpt!r} holds LoRA adapters alone, not a model; give the "
                      "fine-tuning run's workdir (or its export/) instead.")
    try:
      resolve_options(opts, meta)
    except UserError as e:
      raise UserError(f"--checkpoint {ckpt!r}: {e}") from e


def run(args, log=print) -> dict:
  opts = _options(args)
  labels = _labels(args.checkpoint, args.label)
  check_inputs(args, opts)
  problems, train, dataset, notes = _load_problems(args, log)
  entries, summaries = [], {}
  for label, ckpt in zip(labels, args.checkpoint):
    log(f"{label}: evaluating {ckpt} on {len(problems)} problems")
    ckpt = ckpt if args.quantize == "none" else load(ckpt, quantize=args.quantize)
    out = os.path.join(args.out, label)
    progress = os.path.join(out, "progress.jsonl")
    result = evaluate_gsm8k(ckpt, problems, opts, train_pool=train, log=log, progress=progress)
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
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "summary.json"), s)
    _write_jsonl(os.path.join(out, "examples.jsonl"), result.records)
    Progress.finish_path(progress)
    a = s["accuracy"]
    log(f"{label}: accuracy {100 * a['mean']:.1f}% ± {100 * a['stderr']:.1f} "
        f"({a['n']} samples), written to {out}")
    entries.append((label, s, result.records))
    summaries[label] = s
  _write_json(os.path.join(args.out, "summary.json"), summaries)
  report = write_report(entries, args.out)
  if args.tensorboard:
    _tensorboard(args.out, summaries)
  log(f"report: {report}")
  if len(args.checkpoint) == 1:
    log(f"Next: compare it with another checkpoint on the same problems (paired tests): "
        f"python launch/eval.py --checkpoint {args.checkpoint[0]} --checkpoint OTHER "
        f"{_same_problems(args)}--out {args.out}_vs")
  return summaries


def _same_problems(args) -> str:
  """The flags that choose this evaluation's problems, to repeat them."""
  if args.synthetic:
    return (f"--synthetic {args.synthetic} --synthetic-max-steps {args.synthetic_max_steps} "
            f"--synthetic-seed {args.synthetic_seed} ")
  parts = [f"--data {args.data}" if args.data else "",
           f"--problems {args.problems}" if args.problems else "",
           f"--limit {args.limit} --seed {args.seed}" if args.limit else ""]
  return " ".join(p for p in parts if p) + (" " if any(parts) else "")


def _tensorboard(out: str, summaries: dict) -> None:
  """One TensorBoard run per checkpoint (OUT/LABEL/tensorboard; point TensorBoard
  at OUT): its scalar results (accuracy, each metric's mean) at its step."""
  from jaxslm.train.tracking import Trackers
  for label, s in summaries.items():
    flat = {k: v["mean"] for k, v in s.items() if isinstance(v, dict) and "mean" in v}
    flat.update({k: v for k, v in s.items() if isinstance(v, (int, float))
                 and not isinstance(v, bool)})
    t = Trackers(os.path.join(out, label), {"tensorboard": True}, name=label)
    t.log({"step": int(s.get("step") or 0), **flat})
    t.close()


def main(argv) -> int:
  args = parse(argv)
  try:
    run(args)
  except (UserError, FileNotFoundError) as e:
    return report(e)
  return 0
