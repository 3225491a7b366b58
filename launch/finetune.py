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

from jaxslm.config import (DISTRIBUTED_HELP, ConfigDict, finetune_config, parse_args,
                           start_distributed)
from jaxslm.errors import UserError, report
from jaxslm.train.finetune import run
from jaxslm.train.pretrain import TrainingDiverged


def main(argv: list[str]) -> int:
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__ + "\n" + DISTRIBUTED_HELP)
    return 0
  try:
    argv = start_distributed(argv)   # first: before anything asks JAX for a device
    config, options = parse_args(argv, base=finetune_config())
    workdir = options["workdir"] or os.path.join("runs", f"sft_{config.method}")
    if options["resume"]:
      from jaxslm import checkpoint as ckpt
      try:
        meta = ckpt.read_step_meta(ckpt.resolve_step_dir(workdir))
      except FileNotFoundError:
        raise UserError(f"--resume: {workdir!r} holds no fine-tuning checkpoint to continue; "
                        "check --workdir, or drop --resume to start a new run.") from None
      if not options["config_path"]:
        config, _ = parse_args(argv, base=ConfigDict(meta["config"]))
    result = run(config, workdir, resume=options["resume"])
  except (UserError, FileNotFoundError, TrainingDiverged) as e:
    return report(e, 1 if isinstance(e, TrainingDiverged) else 2)
  return 130 if result["interrupted"] else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
