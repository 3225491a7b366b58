"""lm-evaluation-harness tasks for jaxslm checkpoints: the command line and the
report section.

`lm_eval`'s command line with jaxslm's model registered as `jaxslm`:

    python -m jaxslm.evaluation.harness --model jaxslm \\
        --model_args checkpoint=runs/sft,dtype=bfloat16,batch_size=32 --tasks gsm8k,arc_easy
    jaxslm-lm-eval ...        # the same, as an installed script

Every `lm_eval` option works (`--include_path`, `--limit`, `--output_path`,
`--apply_chat_template`, `run` / `ls` / `validate`). The bare `lm_eval`
command cannot find out-of-tree models: the harness has no plugin hook.

From Python, or through `launch/eval.py --harness-tasks arc_easy,hellaswag`
(next to jaxslm's own GSM8K metrics in the report):

    from jaxslm.evaluation.harness import evaluate_tasks
    out = evaluate_tasks("runs/sft", ["arc_easy"], limit=200)
    out["tasks"]["arc_easy"]["acc,none"]  # {"value": ..., "stderr": ...}
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def TaskManager(include_path: str | None = None):  # noqa: N802 - the harness's class
  from lm_eval.tasks import TaskManager as _TaskManager
  return _TaskManager(include_path=include_path)


def evaluate_tasks(model, tasks: Sequence[str], *, limit: int | float | None = None,
                   num_fewshot: int | None = None, include_path: str | None = None,
                   batch_size: int = 32, dtype: str | None = None, max_gen_toks: int = 256,
                   apply_chat_template: bool = False, seed: int = 0, task_manager=None,
                   log=print) -> dict:
  """Run harness tasks on a jaxslm model (path, `jaxslm.load(...)` result or
  (model_cfg, params, tokenizer)). Returns {"tasks": {task: {metric: {"value",
  "stderr"}}}, "samples": {task: n}, "truncated": {request type: n},
  "lm_eval_version", "limit", "num_fewshot"}."""
  try:
    import lm_eval
  except ImportError as e:
    from jaxslm.errors import UserError
    raise UserError("--harness-tasks needs lm-evaluation-harness: pip install "
                    "'jaxslm[lm-eval]' (or pip install lm-eval).") from e
  from jaxslm.api import resolve_model
  from jaxslm.evaluation.lm_eval_backend import JaxslmLM
  tasks = [t.strip() for t in tasks if t.strip()]
  lm = JaxslmLM(model=resolve_model(model), batch_size=batch_size, dtype=dtype,
                max_gen_toks=max_gen_toks, seed=seed)
  log(f"lm-evaluation-harness {lm_eval.__version__}: {', '.join(tasks)}"
      + (f" (limit {limit})" if limit is not None else ""))
  out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot,
                                task_manager=task_manager or TaskManager(include_path=include_path),
                                apply_chat_template=apply_chat_template, random_seed=seed,
                                numpy_random_seed=seed, torch_random_seed=seed,
                                fewshot_random_seed=seed, log_samples=False)
  table = {}
  for task, res in out["results"].items():
    metrics = {}
    for key, value in res.items():
      if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
        continue
      name, filt = key.split(",", 1)
      err = res.get(f"{name}_stderr,{filt}")
      metrics[key] = {"value": float(value),
                      "stderr": float(err) if isinstance(err, (int, float)) else None}
    table[task] = metrics
  samples = {t: int(v.get("effective", v.get("original", 0))) if isinstance(v, dict) else int(v)
             for t, v in out.get("n-samples", {}).items()}
  for task, metrics in table.items():
    log("  " + task + ": " + ", ".join(f"{k} {m['value']:.4f}" for k, m in metrics.items()))
  if any(lm.truncated.values()):
    log(f"  requests cut to the context of {lm.max_length} tokens: {lm.truncated}")
  return {"tasks": table, "samples": samples, "truncated": dict(lm.truncated),
          "lm_eval_version": lm_eval.__version__, "limit": limit, "num_fewshot": num_fewshot}


def markdown(entries: Sequence[tuple[str, dict]]) -> str:
  """The report's harness section: one row per task and metric, one column
  per checkpoint (value ± stderr). `entries`: [(label, evaluate_tasks output)]."""
  entries = [(label, h) for label, h in entries if h]
  if not entries:
    return ""
  rows = sorted({(t, k) for _, h in entries for t, ms in h["tasks"].items() for k in ms})
  head = "| task | metric | " + " | ".join(label for label, _ in entries) + " |"
  lines = ["## lm-evaluation-harness", "",
           f"lm-eval {entries[0][1]['lm_eval_version']}; limit "
           f"{entries[0][1]['limit']}, few-shot {entries[0][1]['num_fewshot']} (task default "
           "when None). Requests longer than the context are cut from the left, as the "
           "harness specifies.", "", head, "|" + " --- |" * (2 + len(entries))]
  for task, key in rows:
    cells = []
    for _, h in entries:
      m = h["tasks"].get(task, {}).get(key)
      cells.append("–" if m is None else f"{m['value']:.4f}" + (
          f" ± {m['stderr']:.4f}" if m["stderr"] is not None else ""))
    lines.append(f"| {task} | {key} | " + " | ".join(cells) + " |")
  cut = [f"{label}: {h['truncated']}" for label, h in entries if any(h["truncated"].values())]
  if cut:
    lines += ["", "Requests cut to fit the context: " + "; ".join(cut) + "."]
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  import jaxslm.evaluation.lm_eval_backend  # noqa: F401  (registers "jaxslm")
  from lm_eval.__main__ import cli_evaluate
  sys.argv = ["jaxslm-lm-eval", *(sys.argv[1:] if argv is None else argv)]
  cli_evaluate()
  return 0


if __name__ == "__main__":
  sys.exit(main())
