"""GSM8K evaluation: answer extraction, honest statistics, other metrics, reports.

    from jaxslm.data import gsm8k
    from jaxslm.evaluation import EvalOptions, evaluate_gsm8k

    problems, _ = gsm8k.select(gsm8k.load("test", path="../shared/data/gsm8k").examples, 200)
    result = evaluate_gsm8k("runs/sft", problems, EvalOptions(max_new_tokens=256))

Modules: `extract` (named answer extractors, normalization, numeric matching),
`stats` (mean ± stderr, intervals, pass@k, maj@k, McNemar, paired bootstrap),
`metrics` (format compliance, ROUGE-1, arithmetic checks, error categories),
`perplexity`, `gsm8k` (the evaluation loop), `report` (Markdown + chart), `cli`
(`launch/eval.py`).
"""

from jaxslm.evaluation.gsm8k import EvalOptions, EvalResult, evaluate_gsm8k
from jaxslm.evaluation.perplexity import perplexity

__all__ = ["EvalOptions", "EvalResult", "evaluate_gsm8k", "perplexity"]
