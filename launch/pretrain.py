"""Pretrain a decoder from scratch.

  python launch/pretrain.py                                  # offline default: synthetic math, minutes on a laptop CPU
  python launch/pretrain.py --config configs/slm26m_owt.py --workdir runs/slm26m
  python launch/pretrain.py --config configs/tiny.py --config.train.steps=50 --workdir runs/t
  python launch/pretrain.py --workdir runs/default --resume  # continue a run exactly
  python launch/pretrain.py --workdir runs/default --resume --config.train.steps=1000   # extend it

Any config field can be overridden with --config.SECTION.FIELD=VALUE. With
--resume and no --config, the run's own saved config is used (plus overrides).
Set JAXSLM_DEBUG=1 to see tracebacks of input errors.
"""

from __future__ import annotations

import os
import sys

from jaxslm.config import launch
from jaxslm.train.pretrain import run


def next_steps(config, workdir: str) -> str:
  return (f"Outputs in {workdir}: checkpoints/, metrics.jsonl, loss.png, config.json.\n"
          f"Next: sample from it,\n"
          f"  python launch/sample.py --checkpoint {workdir} --prompt \"Question: Tom has 3 boxes "
          f"of 12 apples. How many apples does he have?\nAnswer:\" --calculator\n"
          f"or fine-tune it for GRPO's warm start,\n"
          f"  python launch/finetune.py --config configs/sft_synthetic.py "
          f"--config.init_from={workdir} --workdir runs/sft_synth")


def main(argv: list[str]) -> int:
  return launch(argv, __doc__, run, what="pretraining", resume_needs_checkpoint=False,
                default_workdir=lambda c: os.path.join("runs", "default"), next_steps=next_steps)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
