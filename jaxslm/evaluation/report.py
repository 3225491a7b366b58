"""Side-by-side Markdown report and bar chart for several evaluated checkpoints.

    from jaxslm.evaluation.report import write_report
    write_report([("base", summary_a, records_a), ("sft", summary_b, records_b)], "runs/eval")
    # -> runs/eval/report.md, runs/eval/accuracy.png

Each later checkpoint is compared with the first (the baseline) on the
problems both saw, paired by problem index: McNemar's exact test on the
discordant problems and a paired bootstrap of the accuracy difference. Two
runs on different problem sets are compared on their overlap, and the report
says how many problems that is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from jaxslm.evaluation import stats
from jaxslm.evaluation.metrics import ERROR_CATEGORIES

Entry = tuple[str, dict, list[dict]]   # (label, summary, per-example records)


def _pct(x, digits: int = 1) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _num(x, fmt: str = "{:.2f}") -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _acc_cell(a: dict) -> str:
  lo, hi = a["ci95"]
  return f"{_pct(a['mean'])} ± {_pct(a['stderr'])} [{_pct(lo)}, {_pct(hi)}]"


def paired(base: list[dict], other: list[dict], seed: int = 0) -> dict | None:
  """Paired comparison of two runs on their shared problem indices.

  The bootstrap resamples problems and compares per-problem scores (the share
  of a problem's samples that are right: 0 or 1 with one sample), so its Δ is
  the difference of the accuracy column. McNemar's test needs one right/wrong
  outcome per problem: each problem's first sample.
  """
  def by_index(records):
    return {r["index"]: (bool(r["correct"]), float(r.get("score", r["correct"])))
            for r in records}
  a_by, b_by = by_index(base), by_index(other)
  common = sorted(a_by.keys() & b_by.keys())
  if not common:
    return None
  # "other" minus "base": positive = other is better
  mc = stats.mcnemar_exact([b_by[i][0] for i in common], [a_by[i][0] for i in common])
  bs = stats.paired_bootstrap([b_by[i][1] for i in common], [a_by[i][1] for i in common],
                              seed=seed)
  return {"n": len(common), "diff": bs["diff"], "diff_ci95": list(bs["ci95"]),
          "bootstrap_p": bs["p_value"], "mcnemar_p": mc["p_value"],
          "better": mc["a_only"], "worse": mc["b_only"]}


def markdown(entries: Sequence[Entry]) -> str:
  s0 = entries[0][1]
  lines = ["# GSM8K evaluation", ""]
  lines.append(f"{s0['problems']} problems · mode {s0['mode']} · template {s0['template']}"
               f"{' · %d-shot' % s0['num_fewshot'] if s0['num_fewshot'] else ''} · "
               f"temperature {s0['sampling']['temperature']} · n {s0['sampling']['n']} · "
               f"{s0['sampling']['max_new_tokens']} new tokens · "
               f"accuracy by `{s0['primary_extractor']}`"
               + (f" · data: {s0['dataset']['source']}" if "dataset" in s0 else ""))
  lines.append("")
  extractors = list(s0["extractors"])
  ks = list(s0.get("pass_at_k", {}))
  models = [s["similarity"]["model"] for _, s, _ in entries if "mean" in s.get("similarity", {})]
  sim = bool(models)   # a similarity column only when some checkpoint has the metric
  head = ["checkpoint", "accuracy % ± se [95% CI]"] + [f"{e} %" for e in extractors]
  head += [f"pass@{k} %" for k in ks] + [f"maj@{k} %" for k in ks]
  head += ["format strict / partial %", "ROUGE-1"] + ["similarity"] * sim
  head += ["ref. ppl", "ms/token", "problems/min"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label, s, _ in entries:
    fmt = s.get("format")
    row = [label, _acc_cell(s["accuracy"])]
    row += [_pct(s["extractors"].get(e, {}).get("mean")) for e in extractors]
    row += [_pct(s.get("pass_at_k", {}).get(k)) for k in ks]
    row += [_pct(s.get("maj_at_k", {}).get(k)) for k in ks]
    row.append(f"{_pct(fmt['strict'])} / {_pct(fmt['partial'])}" if fmt else "–")
    row.append(_num(s.get("rouge1", {}).get("mean"), "{:.3f}"))
    row += [_num(s.get("similarity", {}).get("mean"), "{:.3f}")] * sim
    row.append(_num(s.get("perplexity", {}).get("ppl")))
    eff = s.get("efficiency", {})
    row += [_num(eff.get("ms_per_token")), _num(eff.get("problems_per_min"), "{:.1f}")]
    lines.append("| " + " | ".join(row) + " |")
  lines += ["", "## Errors (wrong answers by category)", ""]
  lines += ["| checkpoint | " + " | ".join(ERROR_CATEGORIES) + " | finish reasons |",
            "|" + "---|" * (len(ERROR_CATEGORIES) + 2)]
  for label, s, _ in entries:
    n = sum(s["finish_reasons"].values())
    cells = [f"{s['errors'].get(c, 0)} ({_pct(s['errors'].get(c, 0) / n, 0)}%)"
             for c in ERROR_CATEGORIES]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["finish_reasons"].items()))
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {reasons} |")
  if len(entries) > 1:
    lines += ["", f"## Paired comparison with {entries[0][0]}", "",
              "Same problems, paired by index. McNemar: exact two-sided test on the problems "
              "exactly one run solved" + (" (first sample of each problem)" if
                                           s0["sampling"]["n"] > 1 else "") +
              ". Bootstrap: 10,000 resamples of problems, of the accuracy difference.", "",
              "| checkpoint | problems | Δ accuracy % [95% CI] | gained / lost | McNemar p | "
              "bootstrap p |", "|---|---|---|---|---|---|"]
    for label, _, records in entries[1:]:
      p = paired(entries[0][2], records)
      if p is None:
        lines.append(f"| {label} | 0 | no problems in common | – | – | – |")
        continue
      lo, hi = p["diff_ci95"]
      lines.append(f"| {label} | {p['n']} | {100 * p['diff']:+.1f} [{100 * lo:+.1f}, "
                   f"{100 * hi:+.1f}] | {p['better']} / {p['worse']} | {p['mcnemar_p']:.4g} | "
                   f"{p['bootstrap_p']:.4g} |")
  notes = [f"- {label}: {note}" for label, s, _ in entries for note in s.get("notes", [])]
  notes += [f"- {label}: {s['similarity']['skipped']}" for label, s, _ in entries
            if "skipped" in s.get("similarity", {})]
  if sim:
    notes.append(f"- similarity: mean cosine similarity of the completion's and the "
                 f"reference's sentence embeddings; model: {', '.join(sorted(set(models)))}")
  if any("harness" in s for _, s, _ in entries):
    from jaxslm.evaluation.harness import markdown as harness_markdown
    lines += ["", harness_markdown([(label, s.get("harness")) for label, s, _ in entries])]
  if notes:
    lines += ["", "## Notes", "", *notes]
  lines += ["", "![accuracy](accuracy.png)", ""]
  return "\n".join(lines)


def bar_chart(entries: Sequence[Entry], path: str) -> str:
  """Accuracy per checkpoint with 95% interval error bars (1.96 standard errors)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels = [e[0] for e in entries]
  means = [100 * e[1]["accuracy"]["mean"] for e in entries]
  errs = [0.0 if math.isnan(e[1]["accuracy"]["stderr"]) else 196 * e[1]["accuracy"]["stderr"]
          for e in entries]
  fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 2), 3.6), dpi=120)
  ax.bar(range(len(labels)), means, yerr=errs, capsize=6, color="#4C72B0")
  ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0)
  ax.set_ylabel("GSM8K accuracy (%)")
  ax.set_title(f"{entries[0][1]['problems']} problems, error bars: 95% CI")
  ax.set_ylim(0, max(5.0, min(100.0, max(m + e for m, e in zip(means, errs)) * 1.2)))
  for i, m in enumerate(means):
    ax.text(i, m, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def write_report(entries: Sequence[Entry], out_dir: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  bar_chart(entries, os.path.join(out_dir, "accuracy.png"))
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write(markdown(entries))
  return path
