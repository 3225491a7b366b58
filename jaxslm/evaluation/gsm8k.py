"""GSM8K evaluation of one model: batched generation, scoring, statistics.

    from jaxslm.data import gsm8k
    from jaxslm.evaluation import EvalOptions, evaluate_gsm8k

    test = gsm8k.load("test", path="../shared/data/gsm8k")
    problems, _ = gsm8k.select(test.examples, limit=200, seed=1234)
    result = evaluate_gsm8k("runs/sft", problems, EvalOptions(max_new_tokens=256))
    result.summary["accuracy"]    # {"mean", "stderr", "ci95", "ci95_wilson", "n"}
    result.records[0]             # question, prompt, completion, extracted, gold, correct, ...

Modes: "zero-shot" (a prompt template, by default the checkpoint's training
format), "few-shot" (`num_fewshot` exemplars from the train split in
lm-evaluation-harness's gsm8k layout; greedy; stop at "Question:") and "agent"
(the thought / action / observation loop of `jaxslm.agent` with the
calculator). Prompts are generated in batches of `batch_size`, sorted by
length so a batch pads little. A prompt is never cut silently: its budget is
min(max_new_tokens, context - prompt length), and one too long for
`min_budget` is skipped, cut or refused as `long_prompts` says (see
`jaxslm.evaluation.budget`), counted in the summary and printed. Each problem
samples with a seed derived from (seed, problem index), so its completions do
not depend on the batch it ran in or on which other problems were selected.

The headline accuracy uses the template's primary extractor; every extractor
in `extractors` is scored too. With n > 1 samples (temperature > 0):
pass@k (unbiased estimator) and maj@k for each k in `pass_k`; accuracy is then
the mean over all samples (pass@1).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import resource
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

import jax
import numpy as np

from jaxslm.data.gsm8k import Example
from jaxslm.data.templates import Template, fewshot_prompt, get_template
from jaxslm.errors import UserError
from jaxslm.evaluation import budget, extract, metrics, similarity, stats
from jaxslm.evaluation.perplexity import perplexity
from jaxslm.sampling import batching

MODES = ("zero-shot", "few-shot", "agent")
_COUNTS = ("prompts_truncated", "prompts_skipped", "budget_cut")   # see `budget.Plan`
_COMPILE = {"s": 0.0}   # seconds JAX spent tracing and compiling, in this process


def _on_duration(event: str, duration: float, **_) -> None:
  if event.startswith("/jax/core/compile/"):
    _COMPILE["s"] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  mode: str | None = None             # None: "few-shot" if num_fewshot else the checkpoint's
  template: str | None = None         # None: the checkpoint's training format ("qa" if unknown)
  num_fewshot: int = 0
  fewshot_sampler: str = "random"     # "random" (per problem, seeded) or "first_n"
  fewshot_seed: int = 1234
  max_new_tokens: int = 256           # at most; never more than the context left after the prompt
  min_budget: int = 16            # a prompt must leave this much room, else `long_prompts`
  long_prompts: str = "skip"          # "skip" (scored wrong), "truncate" or "error"; see budget.py
  batch_size: int = 64                # rows per generate call, at most
  token_budget: int | None = None     # rows x cache slots per call, at most (None: from the
                                      # device's free memory, `sampling.batching`; 0: rows only)
  n: int = 1                          # samples per problem
  temperature: float = 0.0
  top_p: float = 1.0
  seed: int = 0
  pass_k: tuple[int, ...] = ()        # () -> (1, n) and the powers of two between
  extractors: tuple[str, ...] = tuple(extract.EXTRACTORS)
  calculator: bool = False            # the sampler's <<expr= hook
  rouge: bool = True
  perplexity: bool = True
  similarity: str | None = None      # embedding model: "auto" (if jaxslm[similarity] is
                                      # installed; launch/eval.py's default), a path or hub
                                      # name; None/"off": skip (training-time evals)
  agent_max_steps: int = 8
  add_bos: bool | None = None         # BOS before each prompt; None: the tokenizer's default
                                      # (`add_bos_default`: True for Llama 3 / Gemma / Mistral)


@dataclasses.dataclass
class EvalResult:
  summary: dict
  records: list[dict]

  def __repr__(self) -> str:   # a notebook cell shows this, not every record
    s, nan = self.summary, float("nan")
    mean, se = (s.get("accuracy", {}).get(k, nan) for k in ("mean", "stderr"))
    counts = ", ".join(f"{k} {s[k]}" for k in _COUNTS if s.get(k))
    return (f"EvalResult({s.get('mode')} {s.get('template')!r}: accuracy {100 * mean:.1f}% "
            f"± {100 * se:.1f} on {len(self.records)} problems"
            + (f"; {counts}" if counts else "") + "; .summary, .records)")


def training_format(meta: dict) -> tuple[str, str]:
  """(mode, template) the checkpoint was trained in, from its saved run config."""
  config = meta.get("config") or {}
  sft = config.get("sft") or meta.get("finetune") or {}
  if sft.get("template"):
    return "zero-shot", sft["template"]
  if (config.get("data") or {}).get("synthetic_format") == "react":
    return "agent", "qa"
  return "zero-shot", "qa"


def resolve_options(opts: EvalOptions, meta: dict) -> tuple[str, Template, tuple[int, ...]]:
  mode, template = training_format(meta)
  if opts.num_fewshot:
    mode = "few-shot"
  mode = opts.mode or mode
  if mode not in MODES:
    raise UserError(f"mode={mode!r}; valid modes: {', '.join(MODES)}.")
  if mode == "few-shot" and opts.num_fewshot < 1:
    raise UserError("mode='few-shot' needs num_fewshot >= 1 (e.g. --num-fewshot 5).")
  if mode != "few-shot" and opts.num_fewshot:
    raise UserError(f"num_fewshot={opts.num_fewshot} only applies to mode 'few-shot', "
                    f"not {mode!r}.")
  # k-shot follows lm-evaluation-harness's gsm8k layout unless a template is asked for
  tmpl = get_template(opts.template or ("qa" if mode == "few-shot" else template))
  extract.check_extractors(opts.extractors)
  budget.check_settings(opts.max_new_tokens, opts.min_budget, opts.long_prompts)
  similarity.check_spec(opts.similarity)
  if opts.n < 1 or opts.batch_size < 1 or opts.max_new_tokens < 1:
    raise UserError(f"n={opts.n}, batch_size={opts.batch_size} and max_new_tokens="
                    f"{opts.max_new_tokens} must all be >= 1.")
  if opts.n > 1 and opts.temperature == 0:
    raise UserError(f"n={opts.n} samples at temperature 0 would all be the same greedy "
                    "completion; set a temperature > 0 (e.g. 0.7) for pass@k / maj@k.")
  if mode == "agent" and opts.n > 1:
    raise UserError("the agent mode runs one episode per problem; use n=1.")
  ks = opts.pass_k or tuple(sorted({1, opts.n} | {2 ** i for i in range(1, 12)
                                                   if 2 ** i < opts.n}))
  bad = [k for k in ks if not 1 <= k <= opts.n]
  if bad:
    raise UserError(f"pass_k={list(ks)}: each k must be in [1, n={opts.n}]; raise n or "
                    "drop the larger k.")
  return mode, tmpl, ks


def build_prompts(problems: Sequence[Example], mode: str, tmpl: Template, opts: EvalOptions,
                  train_pool: Sequence[Example] | None) -> list[str]:
  if mode != "few-shot":
    return [tmpl.prompt(p.question) for p in problems]
  if not train_pool:
    raise UserError("few-shot evaluation needs the train split for exemplars; none was given.")
  from jaxslm.data.gsm8k import fewshot
  prompts = []
  for p in problems:
    shots = fewshot(list(train_pool), opts.num_fewshot, sampler=opts.fewshot_sampler,
                    seed=opts.fewshot_seed + p.index, exclude=p.question)
    prompts.append(fewshot_prompt(tmpl, [(s.question, s.answer, s.gold) for s in shots],
                                  p.question))
  return prompts


def _no_log(_: str) -> None:
  """evaluate_gsm8k's default log: silent (skipped or cut prompts then warn instead)."""


def _problem_seed(seed: int, index: int) -> int:
  return (seed * 1_000_003 + index) % (2 ** 31 - 1)


def _generate_all(loaded, prompts: list[str], problems, tmpl: Template, opts: EvalOptions,
                  log: Callable[[str], None], progress_path: str | None = None):
  """Completions for every prompt (n each) in batches; returns (samples, times, info).

  Each prompt's budget is min(max_new_tokens, context - its length); prompts
  too long for `opts.min_budget` are skipped, cut or refused
  (`opts.long_prompts`, see `jaxslm.evaluation.budget`), and said so.
  `progress_path`: problems done are kept there as they are made, and read back
  instead of generated when the same model and settings run again
  (`jaxslm.evaluation.progress`)."""
  from jaxslm.sampling.generate import generate
  tok, cfg = loaded.tokenizer, loaded.model_cfg
  fit = budget.plan([tok.encode(p, add_bos=opts.add_bos) for p in prompts], cfg.max_seq_len,
                    opts.max_new_tokens, min_budget=opts.min_budget,
                    long_prompts=opts.long_prompts)
  ids = fit.ids
  for message in fit.messages():
    log(f"  note: {message}")
  if (fit.skipped or fit.truncated) and log is _no_log:   # a lost prompt reaches the console
    warnings.warn(fit.messages()[0], stacklevel=3)             # even when nothing is logged
  skipped = set(fit.skipped)
  order = sorted((i for i in range(len(prompts)) if i not in skipped), key=lambda i: len(ids[i]))
  samples: list[list[dict]] = [[{"completion": "", "tokens": 0,
                                 "finish_reason": budget.SKIPPED_REASON}] * opts.n
                               if i in skipped else [] for i in range(len(prompts))]
  times = [0.0] * len(prompts)
  info = Counter()
  progress, digests = None, {}
  if progress_path:
    from jaxslm.evaluation import progress as prog
    progress = prog.Progress(progress_path, {
        "model": prog.model_digest(loaded.params), "max_new_tokens": opts.max_new_tokens,
        "temperature": opts.temperature, "top_p": opts.top_p, "n": opts.n, "seed": opts.seed,
        "calculator": opts.calculator, "stop": list(tmpl.stop), "keep_stop": list(tmpl.keep_stop),
        "eos_id": tok.eos_id, "context": cfg.max_seq_len}, log)
    digests = {i: prog.prompt_digest(ids[i]) for i in order}
    left = []
    for i in order:
      hit = progress.take(problems[i].index, digests[i])
      if hit is None:
        left.append(i)
      else:
        samples[i], times[i] = hit["samples"], float(hit["time_s"])
    if len(left) < len(order):
      log(f"  resumed: {len(order) - len(left)} of {len(order)} problems read back from "
          f"{progress_path}; generating the other {len(left)}")
    info["resumed"] = len(order) - len(left)
    order = left
  token_budget = (batching.default_token_budget(cfg) if opts.token_budget is None
                  else opts.token_budget)
  batches = batching.plan([len(ids[i]) for i in order], max_new_tokens=opts.max_new_tokens,
                          max_rows=opts.batch_size, token_budget=token_budget, n=opts.n)
  if len(batches) > -(-len(order) // opts.batch_size):
    log(f"  note: {len(batches)} batches of at most {opts.batch_size} rows under a budget of "
        f"{token_budget:,} cache slots per call (--token-budget)")
  t0, done = time.perf_counter(), 0
  for rows in batches:
    chunk = [order[j] for j in rows]
    tb = time.perf_counter()
    # Rows stop at the end of the context, so a long prompt's budget is what is left of it.
    out = generate(cfg, loaded.params, [ids[i] for i in chunk],
                   max_new_tokens=opts.max_new_tokens, temperature=opts.temperature,
                   top_p=opts.top_p, n=opts.n,
                   seed=[_problem_seed(opts.seed, problems[i].index) for i in chunk],
                   eos_id=tok.eos_id, stop_strings=list(tmpl.stop), tokenizer=tok,
                   calculator=opts.calculator, pad_id=tok.pad_id)
    dt = time.perf_counter() - tb
    info["new_tokens"] += out.timing["new_tokens"]
    info["prefill_s"] += out.timing["prefill_s"]
    info["decode_s"] += out.timing["decode_s"]
    for r, group in enumerate(out.grouped()):
      i = chunk[r]
      times[i] = dt / len(chunk)
      samples[i] = [{"completion": _with_kept_stop(c, tok, tmpl), "tokens": len(c.tokens),
                     "finish_reason": c.finish_reason} for c in group]
    if progress is not None:
      progress.add([{"index": problems[i].index, "prompt": digests[i], "samples": samples[i],
                     "time_s": times[i]} for i in chunk])
    done += len(chunk)
    log(f"  generated {done}/{len(order)} problems ({time.perf_counter() - t0:.1f} s)")
  info["batches"] = len(batches)
  info["token_budget"] = token_budget
  info["prompts_truncated"] = len(fit.truncated)
  info["prompts_skipped"] = len(fit.skipped)
  info["budget_cut"] = len(fit.budget_cut)
  info["notes"] = fit.messages()
  return samples, times, dict(info)


def _with_kept_stop(c, tok, tmpl: Template) -> str:
  """The completion's text, with a stop string of `tmpl.keep_stop` that ended it put back."""
  text = c.text or ""
  if c.finish_reason == "stop_string" and tmpl.keep_stop:
    rest = tok.decode(c.tokens)[len(text):]
    for s in tmpl.keep_stop:
      if rest.startswith(s):
        return text + s
  return text


def _score_sample(s: dict, gold: str, tmpl: Template, mode: str, opts: EvalOptions) -> None:
  text = s["completion"] or ""
  s["extractors"] = extract.score_text(text, gold, opts.extractors)
  primary = "final-answer" if mode == "agent" else tmpl.extractor
  if mode == "agent":
    raw = s.get("final_answer")
    raw = extract.final_answer("Final Answer: " + raw) if raw is not None else None
    s["extracted"], s["correct"] = raw, extract.answers_match(raw, gold)
  else:
    got = s["extractors"].get(primary) or extract.score_text(text, gold, (primary,))[primary]
    s["extracted"], s["correct"] = got["extracted"], got["correct"]
  s["category"] = metrics.categorize(text, correct=s["correct"], extracted=s["extracted"],
                                     finish_reason=s["finish_reason"])


def _accuracy(values, binary: bool = True) -> dict:
  """Mean, standard error (sample std / sqrt(n)) and 95% intervals; the Wilson
  interval only for 0/1 outcomes."""
  values = [float(v) for v in values]
  mean, se = stats.mean_stderr(values)
  lo, hi = stats.normal_ci(mean, se) if not math.isnan(se) else (float("nan"),) * 2
  out = {"mean": mean, "stderr": se, "ci95": [lo, hi], "n": len(values)}
  if binary:
    out["ci95_wilson"] = list(stats.wilson_ci(int(sum(values)), len(values)))
  return out


def peak_memory() -> dict:
  dev = jax.local_devices()[0]
  try:
    ms = dev.memory_stats() or {}
  except Exception:  # noqa: BLE001 (backends without memory stats)
    ms = {}
  return {"device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
          "peak_device_memory_bytes": ms.get("peak_bytes_in_use"),
          "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def evaluate_gsm8k(model, problems: Sequence[Example], options: EvalOptions = EvalOptions(), *,
                   train_pool: Sequence[Example] | None = None,
                   log: Callable[[str], None] = _no_log,
                   progress: str | None = None) -> EvalResult:
  """Evaluate `model` (path, `jaxslm.load(...)` or (cfg, params, tok)) on `problems`.
  `progress`: a file where generations are kept as they are made; a run with the
  same model and settings reads back what is there (zero-shot and few-shot
  modes; the caller removes it when done, `progress.Progress.finish`)."""
  from jaxslm.api import resolve_model
  if not problems:
    raise UserError("evaluate_gsm8k: no problems to evaluate.")
  loaded = resolve_model(model)
  mode, tmpl, ks = resolve_options(options, loaded.meta)
  opts = options
  t0, c0 = time.perf_counter(), _COMPILE["s"]
  if mode == "agent":
    from jaxslm.evaluation.agent_eval import agent_all
    if progress:
      log("  note: agent episodes are not kept as they run; a stopped agent evaluation "
          "starts over")
    prompts, samples, times, info = agent_all(loaded, problems, opts, log)
  else:
    prompts = build_prompts(problems, mode, tmpl, opts, train_pool)
    samples, times, info = _generate_all(loaded, prompts, problems, tmpl, opts, log, progress)
  gen_s = time.perf_counter() - t0
  info["compile_s"] = _COMPILE["s"] - c0
  records = []
  for p, prompt, group, dt in zip(problems, prompts, samples, times):
    for s in group:
      _score_sample(s, p.gold, tmpl, mode, opts)
    first = group[0]
    rec = {"index": p.index, "question": p.question, "prompt": prompt,
           "completion": first["completion"], "extracted": first["extracted"],
           "gold": p.gold, "correct": first["correct"], "category": first["category"],
           "finish_reason": first["finish_reason"], "tokens": first["tokens"],
           "time_s": dt, "extractors": {k: v["correct"] for k, v in first["extractors"].items()}}
    if mode == "agent":
      rec.update(agent_stop=first["agent_stop"], agent_steps=first["agent_steps"])
    if opts.n > 1:
      rec["samples"] = [{k: s[k] for k in ("completion", "extracted", "correct", "tokens",
                                           "finish_reason", "category")} for s in group]
      rec["num_correct"] = sum(s["correct"] for s in group)
      rec["score"] = rec["num_correct"] / len(group)
      rec["maj"] = {str(k): stats.maj_at_k([s["extracted"] for s in group], p.gold, k)
                    for k in ks}
    records.append(rec)
  summary = _summarize(loaded, problems, records, samples, mode, tmpl, ks, opts, info, gen_s)
  t1 = time.perf_counter()
  _add_text_metrics(loaded, problems, records, summary, tmpl, opts, log)
  summary["timing"]["metrics_s"] = time.perf_counter() - t1
  return EvalResult(summary, records)


def _summarize(loaded, problems, records, samples, mode, tmpl, ks, opts, info, gen_s) -> dict:
  all_samples = [s for g in samples for s in g]
  # One value per problem (the mean over its samples): samples of one problem are
  # correlated, so the standard error is over problems, never over samples.
  per_problem = [float(np.mean([s["correct"] for s in g])) for g in samples]
  summary = {
      "checkpoint": loaded.path, "step": loaded.meta.get("step"),
      "mode": mode, "template": tmpl.name, "primary_extractor":
          "final-answer" if mode == "agent" else tmpl.extractor,
      "num_fewshot": opts.num_fewshot, "fewshot_sampler": opts.fewshot_sampler,
      "sampling": {"temperature": opts.temperature, "top_p": opts.top_p, "n": opts.n,
                   "max_new_tokens": opts.max_new_tokens, "min_budget": opts.min_budget,
                   "long_prompts": opts.long_prompts, "seed": opts.seed,
                   "calculator": opts.calculator, "stop": list(tmpl.stop)},
      "problems": len(problems),
      "accuracy": _accuracy(per_problem, binary=opts.n == 1),
      "extractors": {name: _accuracy([np.mean([s["extractors"][name]["correct"] for s in g])
                                      for g in samples], binary=opts.n == 1)
                     for name in opts.extractors},
      "errors": dict(Counter(s["category"] for s in all_samples if s["category"])),
      "finish_reasons": dict(Counter(s["finish_reason"] for s in all_samples)),
  }
  if opts.n > 1:
    ns, cs = [opts.n] * len(records), [r["num_correct"] for r in records]
    summary["pass_at_k"] = {str(k): stats.mean_pass_at_k(ns, cs, k) for k in ks}
    summary["maj_at_k"] = {str(k): _accuracy([r["maj"][str(k)] for r in records])["mean"]
                           for k in ks}
  fmt = tmpl.answer_format
  if mode != "agent" and fmt in metrics.FORMATS:
    scores = [metrics.format_compliance(s["completion"] or "", fmt) for s in all_samples]
    summary["format"] = {"name": fmt, "strict": float(np.mean([f.strict for f in scores])),
                         "partial": float(np.mean([f.partial for f in scores]))}
  new_tokens = int(info.get("new_tokens", 0))
  # Rates leave out JIT compilation (which the first checkpoint evaluated in a
  # process pays for every new shape, and later ones reuse), so checkpoints
  # compare fairly; generate_s is the whole wall time.
  # Problems read back from a progress file were generated by another process:
  # they count in no rate of this one.
  run_s = max(gen_s - info.get("compile_s", 0.0), 1e-9)
  generated = (len(problems) - int(info.get("resumed", 0))
               - int(info.get("prompts_skipped", 0)))
  summary["efficiency"] = {
      "generate_s": gen_s, "new_tokens": new_tokens, "problems_generated": generated,
      "ms_per_token": 1000 * run_s / new_tokens if new_tokens else None,
      "tokens_per_s": new_tokens / run_s if new_tokens else None,
      "problems_per_min": 60 * generated / run_s if generated > 0 else None,
      **{k: v for k, v in info.items() if k not in _COUNTS + ("new_tokens", "notes")},
      **peak_memory()}
  summary["timing"] = {"generate_s": gen_s}
  for key in _COUNTS:
    summary[key] = int(info.get(key, 0))
  if info.get("notes"):
    summary.setdefault("notes", []).extend(info["notes"])
  summary["versions"] = {"jax": jax.__version__, "backend": jax.default_backend(),
                         "date": datetime.datetime.now().isoformat(timespec="seconds")}
  return summary


def _add_text_metrics(loaded, problems, records, summary, tmpl, opts, log) -> None:
  refs = [tmpl.target(p.answer, p.gold) for p in problems]
  if opts.rouge:
    scores = metrics.rouge1_f1_many([r["completion"] or "" for r in records], refs)
    for r, s in zip(records, scores):
      r["rouge1"] = s
    summary["rouge1"] = _accuracy(scores, binary=False)
  if opts.perplexity:
    log("  perplexity of the reference solutions")
    ppl = perplexity(loaded, refs, [tmpl.prompt(p.question) for p in problems],
                     add_bos=opts.add_bos)
    for r, e in zip(records, ppl.pop("per_example")):
      r["ref_nll"], r["ref_tokens"] = e["nll"], e["tokens"]
    summary["perplexity"] = ppl
  if not similarity.is_off(opts.similarity):
    log("  semantic similarity of the completions to the reference solutions")
    sim = similarity.semantic_similarity([r["completion"] or "" for r in records], refs,
                                         opts.similarity)
    for r, s in zip(records, sim.pop("per_example", ())):
      r["similarity"] = s
    summary["similarity"] = sim
