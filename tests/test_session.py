"""What the three trainers share (`jaxslm.train.session`): a failed save stops
the run at once with one line, partial saves are removed, the config is kept
in the workdir and shown as a diff, TensorBoard / W&B mirror metrics.jsonl,
and the CPU MFU denominator is measured once per machine."""

from __future__ import annotations

import errno
import json
import pathlib
import struct
import sys
import types

import pytest

from jaxslm import checkpoint as ckpt
from jaxslm.config import ConfigDict, base_config, launch, load_config
from jaxslm.errors import SaveFailed
from jaxslm.train import pretrain, reporting, session, tracking

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_pretrain(steps=6, every=2):
  c = load_config(ROOT / "configs" / "tiny.py")
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=0, head_dim=0, d_ff=64,
                 max_seq_len=64, dtype="float32", vocab_size=512)
  c.data.update(synthetic_documents=300, val_fraction=0.1)
  c.tokenizer.update(train_documents=200, vocab_size=512)
  c.train.update(steps=steps, batch_size=2, seq_len=16, warmup_steps=0, eval_batches=1,
                 eval_every=100, log_every=1, checkpoint_every=every, sample_prompts=(),
                 peak_flops=1e12)
  return c


def full_disk_on(step_to_fail, *, async_failure=False):
  """A Checkpointer.save that fails like a full disk at `step_to_fail`: at
  once, or (async) after it returned, as Orbax's background write does."""
  real = ckpt.Checkpointer.save

  def save(self, step, *args):
    if step != step_to_fail:
      return real(self, step, *args)
    # What an interrupted Orbax save leaves behind, holding the space.
    (pathlib.Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1234").mkdir()
    err = OSError(errno.ENOSPC, "No space left on device")
    if not async_failure:
      raise err
    self.wait()   # the earlier saves finish first; this one "fails in the background"

    def check_for_errors():
      raise err
    self.manager.check_for_errors = check_for_errors
    return True
  return save


@pytest.mark.parametrize("async_failure", [False, True], ids=["at-save", "async"])
def test_a_failed_save_stops_the_run_with_one_line(tmp_path, monkeypatch, async_failure):
  monkeypatch.setattr(ckpt.Checkpointer, "save", full_disk_on(4, async_failure=async_failure))
  workdir = tmp_path / "w"
  with pytest.raises(SaveFailed) as e:
    pretrain.run(tiny_pretrain(), str(workdir))
  msg = str(e.value)
  assert "\n" not in msg
  assert "Saving checkpoint 4" in msg and "No space left on device" in msg
  assert "last good checkpoint is step 2" in msg and " MB" in msg
  assert f"python launch/pretrain.py --workdir {workdir} --resume" in msg
  # Stopped at once (async: at the first check after the save), not at the next save.
  steps = [r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]
  assert max(steps) == 4
  # The partial save is gone; checkpoint 2 is intact and the run resumes from it.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  monkeypatch.undo()
  out = pretrain.run(tiny_pretrain(), str(workdir), resume=True)
  assert out["start_step"] == 2 and out["step"] == 6


def test_the_launcher_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(ckpt.Checkpointer, "save", full_disk_on(2))
  config = tiny_pretrain(steps=3)
  monkeypatch.setattr("jaxslm.config.base_config", lambda: ConfigDict(config.to_dict()))
  code = launch(["--workdir", str(tmp_path / "w")], "doc", pretrain.run, what="pretraining",
                resume_needs_checkpoint=False, default_workdir=lambda c: "unused")
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: Saving checkpoint 2")
  assert "no earlier checkpoint was saved" in err[0]


def test_partial_saves_are_removed_on_resume(tmp_path, capsys):
  d = tmp_path / "w" / "checkpoints"
  (d / "7.orbax-checkpoint-tmp-99").mkdir(parents=True)
  (d / "7.orbax-checkpoint-tmp-99" / "blob").write_bytes(b"x" * 1000)
  session.Session(str(tmp_path / "w"), what="GRPO", keep=2, resume=True).close()
  assert not (d / "7.orbax-checkpoint-tmp-99").exists()
  assert "Removed 1 unfinished checkpoint directory" in capsys.readouterr().out


def test_config_is_kept_whole_and_shown_as_a_diff(tmp_path, capsys):
  c = tiny_pretrain(steps=1)
  session.Session(str(tmp_path / "w"), what="pretraining", keep=1, resume=False) \
      .open_log(0, 1, c)
  saved = json.loads((tmp_path / "w" / "config.json").read_text())
  assert saved["train"]["steps"] == 1 and saved["model"]["d_model"] == 32
  from jaxslm.config import show_config
  show_config(c, base_config(), "configs/tiny.py", "W")
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("Config: configs/tiny.py;") and "W/config.json" in out[0]
  assert any(line.strip().startswith("train.steps: 500 -> 1") for line in out[1:])
  assert not any("train.b1" in line for line in out)   # unchanged fields are not printed


def read_events(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """A plain reader of TensorBoard event files (TFRecord framing + Event protos)."""
  from tensorboardX.proto import event_pb2
  out: dict[str, list] = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_tensorboard_mirrors_metrics(tmp_path):
  pytest.importorskip("tensorboardX")
  c = tiny_pretrain(steps=3, every=3)
  c.tracking.tensorboard = True
  pretrain.run(c, str(tmp_path / "w"))
  events = read_events(tmp_path / "w" / "tensorboard")
  records = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
  assert [s for s, _ in events["loss"]] == [s for s, _ in losses] == [1, 2, 3]
  assert [v for _, v in events["loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)
  assert "val_loss" in events and events["val_loss"][0][0] == 0


def test_wandb_is_used_only_when_asked(tmp_path, monkeypatch):
  calls = []

  class Run:
    def log(self, values, step):
      calls.append(("log", step, values))

    def finish(self):
      calls.append(("finish",))

  fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run())
  monkeypatch.setitem(sys.modules, "wandb", fake)
  said = []
  t = tracking.Trackers(str(tmp_path), {"wandb_project": "p", "wandb_mode": "offline"},
                        run_config={"a": 1}, say=said.append)
  t.log({"step": 3, "loss": 1.5, "note": "x", "nan": float("nan")})
  t.log({"step": 4, "loss": float("inf")})
  t.close()
  assert said == ["tracking: 2 NaN or infinite value(s) not mirrored to TensorBoard/W&B "
                  "(first: nan at step 3); metrics.jsonl has them"]
  again = tracking.Trackers(str(tmp_path), {"wandb_project": "p", "wandb_mode": "offline"})
  again.close()
  assert calls[0][0] == "init" and calls[0][1]["mode"] == "offline"
  assert calls[0][1]["config"] == {"a": 1} and calls[0][1]["resume"] == "allow"
  assert calls[1] == ("log", 3, {"loss": 1.5}) and calls[2] == ("finish",)
  assert calls[3][1]["id"] == calls[0][1]["id"]   # a resumed run continues the same W&B run
  assert not tracking.Trackers(str(tmp_path), {}).active   # off by default
  from jaxslm.errors import UserError
  monkeypatch.setitem(sys.modules, "wandb", None)
  with pytest.raises(UserError, match="pip install wandb"):
    tracking.Trackers(str(tmp_path), {"wandb_project": "p"})


def test_cpu_peak_is_measured_once_per_machine(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXSLM_CACHE", str(tmp_path))
  rates = iter([1.0e11, 2.0e11])
  monkeypatch.setattr(reporting, "measure_matmul_peak", lambda repeats=30: next(rates))
  first, src1 = reporting.cached_cpu_peak()
  second, src2 = reporting.cached_cpu_peak()
  assert first == second == 1.0e11 and "now" in src1 and "cached in" in src2
  assert json.loads((tmp_path / "cpu_peak_flops.json").read_text())


def test_evaluation_summaries_go_to_tensorboard(tmp_path):
  pytest.importorskip("tensorboardX")
  from jaxslm.evaluation.cli import _tensorboard
  summaries = {"base": {"step": 500, "accuracy": {"mean": 0.25, "stderr": 0.1},
                        "rouge1": {"mean": 0.5}, "n": 4, "label": "base"},
               "sft": {"step": 100, "accuracy": {"mean": 0.5, "stderr": 0.1}}}
  _tensorboard(str(tmp_path), summaries)
  base = read_events(tmp_path / "base" / "tensorboard")
  assert base["accuracy"] == [(500, 0.25)] and base["rouge1"] == [(500, 0.5)]
  assert base["n"] == [(500, 4.0)]
  assert read_events(tmp_path / "sft" / "tensorboard")["accuracy"] == [(100, 0.5)]


def test_a_second_run_on_a_held_workdir_is_refused_before_writing(tmp_path):
  from jaxslm.workdir_lock import WorkdirLock, WorkdirLocked
  workdir = tmp_path / "w"
  with WorkdirLock(str(workdir)):
    with pytest.raises(WorkdirLocked) as e:
      pretrain.run(tiny_pretrain(steps=1), str(workdir))
  assert "\n" not in str(e.value) and str(workdir) in str(e.value)
  assert sorted(p.name for p in workdir.iterdir()) == []   # the lock is gone, nothing was written
