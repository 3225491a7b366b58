"""Pretrain a decoder from scratch.

  python launch/pretrain.py                                  # offline default: synthetic math, ~3 min on a laptop CPU
  python launch/pretrain.py --config configs/slm26m_owt.py --workdir runs/slm26m
  python launch/pretrain.py --config configs/tiny.py --config.train.steps=50 --workdir runs/t
  python launch/pretrain.py --workdir runs/default --resume  # continue a run exactly

Any config field can be overridden with --config.SECTION.FIELD=VALUE.
"""

from __future__ import annotations

import os
import sys

from jaxslm.config import parse_args
from jaxslm.train.pretrain import TrainingDiverged, run

USAGE = __doc__


def main(argv: list[str]) -> int:
  if any(a in ("-h", "--help") for a in argv):
    print(USAGE)
    return 0
  try:
    config, options = parse_args(argv)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  workdir = options["workdir"] or os.path.join("runs", "default")
  try:
    run(config, workdir, resume=options["resume"])
  except TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
