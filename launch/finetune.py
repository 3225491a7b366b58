"""Fine-tune a checkpoint: LoRA, QLoRA, stacked LoRA or full fine-tuning.

  python launch/finetune.py --config configs/sft_gsm8k_lora.py --config.init_from=runs/default \
      --config.data.path=../shared/data/gsm8k --workdir runs/sft_lora
  python launch/finetune.py --config configs/sft_gsm8k_qlora.py --config.init_from=runs/default ...
  python launch/finetune.py --config configs/sft_gsm8k_full.py --config.init_from=runs/default ...
  python launch/finetune.py --config configs/sft_gsm8k_stacked.py --config.init_from=runs/default \
      --config.stack_from=runs/sft_lora --config.data.source=instructions \
      --config.data.path=code.jsonl --workdir runs/sft_stacked
  python launch/finetune.py --workdir runs/sft_lora --resume     # continue exactly

Any config field can be overridden with --config.SECTION.FIELD=VALUE. The
workdir gets checkpoints/ (jaxslm.load(workdir) gives base + adapters),
adapters/ (the adapters alone), export/ (the merged model), metrics.jsonl and
loss.png. Then: python launch/eval.py --checkpoint runs/sft_lora ...
Exit codes: 0 ok, 1 diverged, 2 bad input, 130 interrupted (saved).
"""

from __future__ import annotations

import os
import sys

from jaxslm.config import finetune_config, launch
from jaxslm.train.finetune import run


def next_steps(config, workdir: str) -> str:
  data = f" --data {config.data.path}" if config.data.source == "gsm8k" and config.data.path else ""
  if config.data.source == "synthetic":
    return (f"Outputs in {workdir}: checkpoints/, export/ (the merged model), "
            f"{'' if config.method == 'full' else 'adapters/, '}metrics.jsonl, loss.png, "
            f"summary.json.\nNext: GRPO from it,\n  python launch/grpo.py --config "
            f"configs/grpo_synthetic.py --config.init_from={workdir} --workdir runs/grpo_synth")
  return (f"Outputs in {workdir}: checkpoints/, export/ (the merged model), "
          f"{'' if config.method == 'full' else 'adapters/, '}metrics.jsonl, loss.png, "
          f"summary.json.\nNext: compare it with its base on held-out GSM8K problems,\n"
          f"  python launch/eval.py --checkpoint {config.init_from} --checkpoint {workdir}{data} "
          f"--limit 200 --out {workdir}/eval")


def main(argv: list[str]) -> int:
  return launch(argv, __doc__, run, finetune_config(), what="fine-tuning",
                default_workdir=lambda c: os.path.join("runs", f"sft_{c.method}"),
                next_steps=next_steps)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
