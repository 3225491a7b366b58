"""GRPO with verifiable rewards, LoRA during RL by default (full with --config.method=full).

  python launch/grpo.py --config configs/grpo_gsm8k.py --config.init_from=CHECKPOINT \
      --config.data.path=../shared/data/gsm8k --workdir runs/grpo_gsm8k
  python launch/grpo.py --config configs/grpo_synthetic.py \
      --config.init_from=runs/sft_synth --workdir runs/grpo_synth     # minutes on a CPU
  python launch/grpo.py --workdir runs/grpo_gsm8k --resume           # continue exactly

Any config field can be overridden with --config.SECTION.FIELD=VALUE (e.g.
--config.grpo.G=8 --config.grpo.adv_norm=none --config.grpo.aggregation=token_sum
for Dr.GRPO). The workdir gets checkpoints/, metrics.jsonl (one record per
step: rewards per component, accuracy, format, KL, beta, eps, clip fraction,
entropy, lengths, timing), curves.png, summary.json, adapters/ and export/.
Exit codes: 0 ok, 1 diverged, 2 bad input, 130 interrupted (saved).
"""

from __future__ import annotations

import os
import sys

from jaxslm.config import grpo_config, launch
from jaxslm.train.grpo import run


def next_steps(config, workdir: str) -> str:
  if config.data.source == "gsm8k":
    data = f" --data {config.data.path}" if config.data.path else ""
    compare = (f"  python launch/eval.py --checkpoint {config.init_from} --checkpoint {workdir}"
               f"{data} --template {config.data.template} --limit 200 --out {workdir}/eval")
  else:
    compare = (f"  python launch/eval.py --checkpoint {config.init_from} --checkpoint {workdir} "
               f"--synthetic 200 --template {config.data.template} --out {workdir}/eval")
  return (f"Outputs in {workdir}: checkpoints/, export/ (the merged model), "
          f"{'' if config.method == 'full' else 'adapters/, '}metrics.jsonl, curves.png, "
          f"summary.json.\nNext: compare it with where it started, on held-out problems,\n"
          f"{compare}\nor export it for transformers,\n"
          f"  python launch/convert.py jax2hf --checkpoint {workdir} --out exports/grpo")


def main(argv: list[str]) -> int:
  return launch(argv, __doc__, run, grpo_config(), what="GRPO",
                default_workdir=lambda c: os.path.join("runs", f"grpo_{c.method}"),
                next_steps=next_steps)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
