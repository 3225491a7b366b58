"""jaxslm.paths: local paths behave as with `os`; URLs (gs://) take the epath branch,
exercised here on a local directory standing in for the bucket (no network, no gcsfs)."""

from __future__ import annotations

import os

import pytest

from jaxslm import checkpoint as ckpt
from jaxslm import paths
from jaxslm.train import reporting


def test_local_and_url_names():
  assert not paths.is_remote("runs/a") and paths.is_remote("gs://b/run")
  assert paths.resolve("runs/a") == os.path.abspath("runs/a")
  assert paths.resolve("~/x") == os.path.expanduser("~/x")
  assert paths.resolve("gs://b/run/") == "gs://b/run"
  assert paths.join("gs://b/run/", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert paths.join("/tmp/r", "metrics.jsonl") == "/tmp/r/metrics.jsonl"
  assert ckpt.checkpoint_dir("gs://b/run") == "gs://b/run/checkpoints"
  assert ckpt._orbax_path("/tmp/r") == "/tmp/r"
  assert str(ckpt._orbax_path("gs://b/run")) == "gs://b/run"


def test_local_files_replace_atomically_and_append(tmp_path):
  f = str(tmp_path / "m.jsonl")
  paths.append_text(f, "a\n")
  paths.append_text(f, "b\n")
  assert paths.read_text(f) == "a\nb\n"
  paths.write_text(f, "c\n")
  assert paths.read_text(f) == "c\n" and not os.path.exists(f + ".tmp")
  assert paths.finished(str(tmp_path))   # locally, a final name means finished


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://bkt/... mapped onto tmp_path/bkt/... through the epath branch of jaxslm.paths."""
  from etils import epath
  monkeypatch.setattr(paths, "_epath",
                      lambda p: epath.Path(str(tmp_path / os.fspath(p)[len("gs://"):])))
  return tmp_path


def test_url_branch_metrics_plot_and_unfinished_checkpoints(bucket):
  w = "gs://bkt/run"
  paths.makedirs(w)
  log = reporting.MetricsLog(paths.join(w, "metrics.jsonl"))
  for s in (1, 2, 3):
    log.write({"step": s, "loss": 1.0 / s})
  log.truncate_after(2)
  assert [r["step"] for r in log.read()] == [1, 2]
  assert (bucket / "bkt/run/metrics.jsonl").is_file()
  assert reporting.plot_losses(log.read(), paths.join(w, "loss.png")) == "gs://bkt/run/loss.png"
  assert (bucket / "bkt/run/loss.png").read_bytes()[:4] == b"\x89PNG"
  # Steps on an object store count once Orbax's commit file is there.
  for step in (2, 4):
    for item in ("params", "meta"):
      paths.makedirs(paths.join(w, "checkpoints", str(step), item))
  with pytest.raises(FileNotFoundError, match="No checkpoint found"):
    ckpt.resolve_step_dir(w)
  paths.write_text(paths.join(w, "checkpoints", "2", paths.COMMIT_FILE), "ok")
  assert ckpt.resolve_step_dir(w) == "gs://bkt/run/checkpoints/2"   # 4 is unfinished
  for item in ("params", "meta"):   # a params-only save: one commit file per item
    paths.write_text(paths.join(w, "checkpoints", "4", item, paths.COMMIT_FILE), "ok")
  assert ckpt.resolve_step_dir(w) == "gs://bkt/run/checkpoints/4"
  assert sorted(paths.listdir(w)) == ["checkpoints", "loss.png", "metrics.jsonl"]
  paths.rmtree(paths.join(w, "checkpoints"))
  assert not paths.exists(paths.join(w, "checkpoints"))
