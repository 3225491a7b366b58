"""Evaluate checkpoints on GSM8K: exact match with standard errors, pass@k,
format compliance, ROUGE-1, perplexity, error categories, efficiency, and a
side-by-side report with paired tests.

  python launch/eval.py --checkpoint runs/default --data ../shared/data/gsm8k --limit 200
  python launch/eval.py --checkpoint runs/a --checkpoint runs/b --data ../shared/data/gsm8k \\
      --limit 500 --out runs/eval/a_vs_b
  python launch/eval.py --checkpoint runs/base --data ../shared/data/gsm8k --num-fewshot 5

Writes --out/report.md, accuracy.png, summary.json and, per checkpoint,
<label>/summary.json and <label>/examples.jsonl. `--help` lists every option.
Exit codes: 0 ok, 2 bad input.
"""

import sys

from jaxslm.evaluation.cli import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
