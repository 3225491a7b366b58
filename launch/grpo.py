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

from jaxslm.config import (DISTRIBUTED_HELP, ConfigDict, grpo_config, parse_args,
                           start_distributed)
from jaxslm.errors import UserError, report
from jaxslm.train.grpo import run
from jaxslm.train.pretrain import TrainingDiverged


def main(argv: list[str]) -> int:
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__ + "\n" + DISTRIBUTED_HELP)
    return 0
  try:
    argv = start_distributed(argv)   # first: before anything asks JAX for a device
    config, options = parse_args(argv, base=grpo_config())
    workdir = options["workdir"] or os.path.join("runs", f"grpo_{config.method}")
    if options["resume"]:
      from jaxslm import checkpoint as ckpt
      try:
        meta = ckpt.read_step_meta(ckpt.resolve_step_dir(workdir))
      except FileNotFoundError:
        raise UserError(f"--resume: {workdir!r} holds no GRPO checkpoint to continue; check "
                        "--workdir, or drop --resume to start a new run.") from None
      if not options["config_path"]:
        config, _ = parse_args(argv, base=ConfigDict(meta["config"]))
    result = run(config, workdir, resume=options["resume"])
  except (UserError, FileNotFoundError, TrainingDiverged) as e:
    return report(e, 1 if isinstance(e, TrainingDiverged) else 2)
  return 130 if result["interrupted"] else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
