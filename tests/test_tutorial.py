"""docs/tutorial.md runs: every command and notebook cell in it, in order, at
tiny sizes (overrides appended to each command), in a scratch directory. A
changed flag, config field or output path breaks this test, not the page."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"

# Appended to each launcher's command: the same code paths, tiny sizes. Later
# flags win in argparse and in the config parser alike.
TINY = {
    "launch/pretrain.py": [
        "--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
        "--config.model.d_ff=64", "--config.model.max_seq_len=320",
        "--config.tokenizer.vocab_size=400", "--config.model.vocab_size=400",
        "--config.tokenizer.train_documents=200", "--config.data.synthetic_documents=300",
        "--config.train.steps=4", "--config.train.batch_size=4", "--config.train.seq_len=64",
        "--config.train.warmup_steps=0", "--config.train.eval_every=4",
        "--config.train.eval_batches=1", "--config.train.checkpoint_every=4",
        "--config.train.sample_tokens=8", "--config.train.peak_flops=1e12"],
    "launch/sample.py": ["--max-new-tokens", "8"],
    "launch/eval.py": ["--synthetic", "4", "--max-new-tokens", "24", "--no-perplexity",
                       "--no-rouge", "--similarity-model", "off", "--batch-size", "4"],
    "launch/finetune.py": [
        "--config.train.steps=2", "--config.train.batch_size=4", "--config.train.seq_len=300",
        "--config.train.warmup_steps=0", "--config.train.log_every=1",
        "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
        "--config.data.val_examples=4", "--config.eval.problems=2",
        "--config.eval.max_new_tokens=16", "--config.eval.batch_size=2"],
    "launch/grpo.py": [
        "--config.train.steps=2", "--config.train.checkpoint_every=2",
        "--config.grpo.prompts_per_step=2", "--config.grpo.max_new_tokens=16",
        "--config.data.train_problems=8", "--config.data.prompt_budget=96",
        "--config.eval.problems=2", "--config.eval.every=2", "--config.eval.max_new_tokens=16"],
    "launch/convert.py": [],
}
SYNTHETIC_SOURCE = {"launch/finetune.py": ["--config.data.synthetic_problems=40"]}


def blocks(text: str) -> list[tuple[str, str]]:
  """(language, body) of each fenced code block, in order."""
  return re.findall(r"```(bash|python)\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
  """A bash block's commands: backslash-newlines joined, then split at
  newlines outside quotes (a prompt may hold a newline inside its quotes)."""
  text = block.replace("\\\n", " ")
  out, cur, quote = [], [], None
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "\"'":
      quote = ch
    elif ch == "\n":
      out.append("".join(cur))
      cur = []
      continue
    cur.append(ch)
  out.append("".join(cur))
  return [c.strip() for c in out if c.strip() and not c.strip().startswith("#")]


def test_the_tutorial_parses():
  parsed = blocks(TUTORIAL.read_text())
  cmds = [c for lang, b in parsed if lang == "bash" for c in commands(b)]
  launchers = [shlex.split(c)[1] for c in cmds]
  assert set(launchers) <= set(TINY), launchers
  for needed in ("launch/pretrain.py", "launch/sample.py", "launch/eval.py",
                 "launch/finetune.py", "launch/grpo.py", "launch/convert.py"):
    assert needed in launchers
  assert sum(lang == "python" for lang, _ in parsed) >= 2
  prompt = next(c for c in cmds if "launch/sample.py" in c)
  assert "\nAnswer:" in shlex.split(prompt)[shlex.split(prompt).index("--prompt") + 1]


def write_gsm8k(directory: pathlib.Path) -> None:
  from jaxslm.data.synthetic import SyntheticMath
  gen = SyntheticMath(5, max_steps=2)
  directory.mkdir(parents=True)
  for split, start in (("train", 0), ("test", 100)):
    (directory / f"{split}.jsonl").write_text("".join(
        json.dumps({"question": p.question, "answer": p.answer}) + "\n"
        for p in (gen.problem(start + i) for i in range(24))))


def test_the_tutorial_runs(tmp_path):
  for name in ("launch", "configs"):
    (tmp_path / name).symlink_to(ROOT / name)
  gsm8k = tmp_path / "gsm8k"
  write_gsm8k(gsm8k)
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXSLM_CACHE": str(tmp_path / "cache"),
         "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
  env.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tiktoken_cache"))
  for lang, body in blocks(TUTORIAL.read_text()):
    body = body.replace("../shared/data/gsm8k", str(gsm8k))
    if lang == "python":
      run = [[sys.executable, "-c", body.replace("max_new_tokens=64", "max_new_tokens=8")]]
    else:
      run = []
      for cmd in commands(body):
        argv = shlex.split(cmd)
        assert argv[0] == "python", cmd
        extra = TINY[argv[1]] + (SYNTHETIC_SOURCE.get(argv[1], []) if "synthetic" in cmd else [])
        run.append([sys.executable] + argv[1:] + extra)
    for argv in run:
      res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
      assert res.returncode == 0, (f"{' '.join(argv)}\nexit {res.returncode}\n"
                                   f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
  # What the tutorial says each step writes is there.
  for path in ("runs/default/loss.png", "runs/default/config.json",
               "runs/eval/default/report.md", "runs/sft_lora/adapters", "runs/sft_lora/export",
               "runs/grpo_synth/curves.png", "runs/grpo_synth/summary.json",
               "runs/eval/grpo/report.md", "exports/grpo_synth/config.json"):
    assert (tmp_path / path).exists(), path
