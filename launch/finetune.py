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


def main(argv: list[str]) -> int:
  return launch(argv, __doc__, run, finetune_config(), what="fine-tuning",
                default_workdir=lambda c: os.path.join("runs", f"sft_{c.method}"))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
