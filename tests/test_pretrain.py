"""End-to-end pretraining: exact resume, NaN and Ctrl-C safety, bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxslm
from jaxslm.config import load_config, parse_args
from jaxslm.train import step as step_module
from jaxslm.train.pretrain import TrainingDiverged, run

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(ROOT / "launch" / "pretrain.py")]


def tiny(**train):
  c = load_config(ROOT / "configs" / "tiny.py")
  c.data.synthetic_documents = 1200
  c.tokenizer.train_documents = 600
  c.train.update({**dict(steps=8, decay_steps=8, warmup_steps=2, batch_size=8, seq_len=32,
                         eval_every=4, eval_batches=1, checkpoint_every=4, log_every=1,
                         sample_prompts=()), **train})
  return c


def losses(workdir):
  recs = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_exact_resume(tmp_path):
  straight = run(tiny(), str(tmp_path / "a"))
  first = run(tiny(steps=4), str(tmp_path / "b"))
  assert first["step"] == 4
  second = run(tiny(), str(tmp_path / "b"), resume=True)
  assert second["start_step"] == 4 and second["step"] == 8
  la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
  steps_b = [json.loads(l).get("step") for l in open(tmp_path / "b" / "metrics.jsonl")
             if "loss" in json.loads(l)]
  assert steps_b == sorted(set(steps_b)), "a resumed run logs each step once"
  assert set(la) == set(lb) and all(la[s] == lb[s] for s in la), (la, lb)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight["params"]),
               jax.device_get(second["params"]))
  # The checkpoint rebuilds model + tokenizer alone.
  model_cfg, params, tok = jaxslm.load(str(tmp_path / "b"))
  assert model_cfg == straight["model_cfg"]
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(straight["params"]))
  assert tok.encode("Question: 3+4") == straight["tokenizer"].encode("Question: 3+4")


def test_nan_params_stop_the_run_before_they_are_saved(tmp_path, monkeypatch):
  """Update 4 makes the params NaN while its own loss (computed before the
  update) is finite: the step-4 checkpoint must not be written."""
  real = step_module.train_step

  def poisoned(state, batch, **kw):
    state, m = real(state, batch, **kw)
    bad = jnp.where(state.step >= 4, jnp.nan, 0.0)
    params = jax.tree.map(lambda p: p + bad, state.params)
    return state.replace(params=params), {**m, "param_norm": m["param_norm"] + bad}

  monkeypatch.setattr(step_module, "train_step", poisoned)
  with pytest.raises(TrainingDiverged, match="step 4.*last good checkpoint.*step 2"):
    run(tiny(checkpoint_every=2), str(tmp_path / "w"))
  loaded = jaxslm.load(str(tmp_path / "w"))
  assert loaded.meta["step"] == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(loaded.params))


def _read_until(proc, needle, timeout):
  lines, end = [], time.time() + timeout
  while time.time() < end:
    line = proc.stdout.readline()
    if not line:
      break
    lines.append(line)
    if needle in line:
      return lines
  raise AssertionError(f"{needle!r} not seen:\n" + "".join(lines))


def _launch_args(workdir, steps, *extra):
  return ["--config", str(ROOT / "configs" / "tiny.py"), "--workdir", str(workdir),
          "--config.data.synthetic_documents=1200", "--config.tokenizer.train_documents=600",
          f"--config.train.steps={steps}", "--config.train.decay_steps=100000",
          "--config.train.batch_size=8", "--config.train.seq_len=32",
          "--config.train.eval_every=100000", "--config.train.checkpoint_every=1",
          "--config.train.log_every=1", "--config.train.sample_prompts=()", *extra]


def test_ctrl_c_saves_and_resume_continues(tmp_path):
  # A checkpoint every step: the signal always lands on a step that was just saved.
  proc = subprocess.Popen(LAUNCH + _launch_args(tmp_path / "w", 100000), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    _read_until(proc, " 3/100000", 180)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 130, out
  assert "Interrupted: saved step" in out and "Traceback" not in out
  saved = jaxslm.load(str(tmp_path / "w")).meta["step"]
  assert saved >= 3
  # --resume without --config continues with the run's own saved config.
  res = subprocess.run(LAUNCH + ["--workdir", str(tmp_path / "w"), "--resume",
                                 f"--config.train.steps={saved + 2}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
  assert res.returncode == 0, res.stdout + res.stderr
  assert f"Resumed from step {saved}" in res.stdout and "Warning" not in res.stdout
  assert jaxslm.load(str(tmp_path / "w")).meta["step"] == saved + 2


def test_resume_warns_when_the_schedule_changes(tmp_path, capsys):
  run(tiny(steps=4, decay_steps=0), str(tmp_path / "w"))
  capsys.readouterr()
  run(tiny(steps=6, decay_steps=0), str(tmp_path / "w"), resume=True)
  out = capsys.readouterr().out
  assert "Warning: resuming with a changed config" in out and "cosine decay length" in out


CRASH = """
import os, signal, sys, time
import jax, jax.numpy as jnp
from jaxslm.checkpoint import Checkpointer
c = Checkpointer(sys.argv[1], keep=5)
small = {"w": jnp.arange(10.0)}
c.save(1, small, {"m": jnp.zeros(3)}, {"step": 1}); c.wait()
big = {"w": jnp.ones((64, 1024, 1024))}      # 256 MB: the save is still writing when killed
c.save(2, big, {"m": jnp.zeros(3)}, {"step": 2})
print("saving", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_mid_save_leaves_previous_checkpoint(tmp_path):
  d = tmp_path / "ckpt"
  out = subprocess.run([sys.executable, "-c", CRASH, str(d)], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == -signal.SIGKILL and "saving" in out.stdout, out.stderr
  from jaxslm.checkpoint import Checkpointer, abstract_like
  c = Checkpointer(str(d))
  assert c.latest_step() == 1, os.listdir(d)
  params, _, meta = c.restore(1, abstract_like({"w": jnp.zeros(10)}),
                              abstract_like({"m": jnp.zeros(3)}))
  np.testing.assert_array_equal(params["w"], np.arange(10.0))
  assert meta == {"step": 1}


def test_default_run_end_to_end(tmp_path):
  """The offline default (shortened): val loss falls, files and samples appear."""
  w = tmp_path / "default"
  res = subprocess.run(LAUNCH + ["--workdir", str(w), "--config.train.steps=60",
                                 "--config.train.warmup_steps=10", "--config.train.eval_every=30",
                                 "--config.train.checkpoint_every=30",
                                 "--config.data.synthetic_documents=3000",
                                 "--config.tokenizer.train_documents=1500",
                                 "--config.train.sample_tokens=24"],
                       cwd=ROOT, capture_output=True, text=True, timeout=400)
  out = res.stdout + res.stderr
  assert res.returncode == 0, out
  for text in ("Config:", "Devices:", "Parameters: 924,416 total", "tok_s", "mfu",
               "--- sample (greedy) ---\nQuestion:"):
    assert text in out, text
  recs = [json.loads(l) for l in open(w / "metrics.jsonl")]
  vals = [r["val_loss"] for r in recs if "val_loss" in r]
  assert len(vals) == 3 and vals[-1] < vals[0] - 1.0, vals
  assert (w / "loss.png").stat().st_size > 1000
  assert sorted(os.listdir(w / "checkpoints")) == ["30", "60"]


# --- bad input -----------------------------------------------------------------------------


def test_unknown_config_field_lists_valid_ones():
  with pytest.raises(ValueError, match=r"no field 'stepz'.*Did you mean 'steps'.*batch_size"):
    parse_args(["--config.train.stepz=3"])
  with pytest.raises(ValueError, match="expected a int"):
    parse_args(["--config.train.steps=abc"])
  config, _ = parse_args(["--config.train.sample_prompts=Hello"])
  assert config.train.sample_prompts == ("Hello",)


@pytest.mark.parametrize("override, match", [
    ("--config.train.log_every=0", "log_every"),
    ("--config.train.steps=20", "train.steps=20 .*warmup_steps"),
    ("--config.mesh.fsdp=3", "mesh.fsdp"),
    ("--config.train.grad_accum=3", "grad_accum"),
])
def test_bad_train_values_fail_before_any_data_work(override, match, tmp_path):
  config, _ = parse_args([override])
  with pytest.raises(ValueError, match=match):
    run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_launcher_reports_bad_field_without_traceback():
  res = subprocess.run(LAUNCH + ["--config.model.d_modl=3"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert "d_model" in res.stderr


def test_no_files_match_glob(tmp_path):
  c = tiny()
  c.data.path = str(tmp_path / "nothing*.jsonl")
  c.tokenizer.name = "gpt2"
  c.model.vocab_size = 50257
  with pytest.raises(FileNotFoundError, match="nothing"):
    run(c, str(tmp_path / "w"))


def test_empty_corpus(tmp_path):
  (tmp_path / "empty.jsonl").write_text("")
  c = tiny()
  c.data.path = str(tmp_path / "empty.jsonl")
  c.tokenizer.name = "gpt2"
  c.model.vocab_size = 50257
  with pytest.raises(ValueError, match="(?i)empty|no documents"):
    run(c, str(tmp_path / "w"))


def test_seq_len_beyond_model_maximum(tmp_path):
  with pytest.raises(ValueError, match="max_seq_len"):
    run(tiny(seq_len=1000), str(tmp_path / "w"))


def test_workdir_with_other_model_is_refused(tmp_path):
  run(tiny(steps=4), str(tmp_path / "w"))
  with pytest.raises(ValueError, match="already holds a checkpoint.*--resume"):
    run(tiny(steps=4), str(tmp_path / "w"))
  other = tiny(steps=4)
  other.model.d_model = 128
  with pytest.raises(ValueError, match="different model.*d_model"):
    run(other, str(tmp_path / "w"), resume=True)
