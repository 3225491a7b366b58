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

from jaxslm.config import DISTRIBUTED_HELP, parse_args, start_distributed
from jaxslm.errors import UserError, report
from jaxslm.train.pretrain import TrainingDiverged, run, saved_config


def main(argv: list[str]) -> int:
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__ + "\n" + DISTRIBUTED_HELP)
    return 0
  try:
    argv = start_distributed(argv)   # first: before anything asks JAX for a device
    config, options = parse_args(argv)
    workdir = options["workdir"] or os.path.join("runs", "default")
    if options["resume"] and not options["config_path"]:
      saved = saved_config(workdir)
      if saved is not None:
        config, _ = parse_args(argv, base=saved)
    result = run(config, workdir, resume=options["resume"])
  except (UserError, FileNotFoundError, TrainingDiverged) as e:
    return report(e, 1 if isinstance(e, TrainingDiverged) else 2)
  return 130 if result["interrupted"] else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
