import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.checkpoint import Checkpointer, abstract_like, read_step_meta, resolve_step_dir


def _save(d, steps, keep=2):
  c = Checkpointer(str(d), keep=keep)
  for s in steps:
    c.save(s, {"w": jnp.full((3,), float(s))}, {"m": jnp.zeros(2)}, {"step": s})
  c.wait()
  return c


def test_keeps_last_k_and_restores(tmp_path):
  c = _save(tmp_path / "checkpoints", [1, 2, 3], keep=2)
  assert c.all_steps() == [2, 3]
  params, opt, meta = c.restore(2, abstract_like({"w": jnp.zeros(3)}), abstract_like({"m": jnp.zeros(2)}))
  np.testing.assert_array_equal(params["w"], [2.0, 2.0, 2.0])
  assert meta == {"step": 2} and c.read_meta() == {"step": 3}


def test_resolve_step_dir_accepts_workdir_checkpoints_and_step(tmp_path):
  _save(tmp_path / "checkpoints", [4, 7])
  step7 = str(tmp_path / "checkpoints" / "7")
  assert resolve_step_dir(str(tmp_path)) == step7
  assert resolve_step_dir(str(tmp_path / "checkpoints")) == step7
  assert resolve_step_dir(str(tmp_path / "checkpoints" / "4")).endswith("4")
  assert read_step_meta(step7) == {"step": 7}


def test_resolve_ignores_unfinished_temporaries(tmp_path):
  _save(tmp_path / "checkpoints", [1])
  os.makedirs(tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123" / "meta")
  assert resolve_step_dir(str(tmp_path)).endswith(os.sep + "1")


def test_missing_checkpoint_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    resolve_step_dir(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="No checkpoint found"):
    resolve_step_dir(str(tmp_path))
