"""Runs launcher commands one after another in one process (tests/test_distributed.py).

  python tests/_multiprocess_worker.py '[["pretrain", "--config", "configs/tiny.py", ...],
                                         ["grpo", ...]]'

The first launcher call joins the multi-process run that the JAXSLM_* variables
describe (later calls find it joined). Exits with the first non-zero launcher code.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def launcher(name: str):
  spec = importlib.util.spec_from_file_location(f"launch_{name}", ROOT / "launch" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def length_reward(prompts, completions, answers):
  """A reward that varies between a random model's completions (GRPO runs name it
  as `_multiprocess_worker:length_reward`), so updates follow a real signal, not
  rounding noise that Adam would scale up."""
  return [len(c) / 10.0 for c in completions]


def main(jobs: list[list[str]]) -> int:
  for name, *argv in jobs:
    code = launcher(name).main(argv)
    if code:
      return code
  return 0


if __name__ == "__main__":
  sys.exit(main(json.loads(sys.argv[1])))
