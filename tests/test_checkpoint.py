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


@pytest.mark.parametrize("has_option", [True, False])
def test_host_arrays_save_with_or_without_the_no_copy_option(tmp_path, monkeypatch, has_option):
  """Conversion writes host arrays in place; an orbax whose NumpyHandler has no
  `deepcopy_host_arrays` (the one on the GPU image) writes them all the same."""
  from orbax.checkpoint import type_handlers as th
  from jaxslm.checkpoint import read_step_params, save_params
  real, made = th.NumpyHandler, []

  class Handler(real):
    def __init__(self, **kw):
      made.append(kw)
      if kw and not has_option:
        raise TypeError(f"unexpected keyword arguments {sorted(kw)}")
      super().__init__(**kw)

  monkeypatch.setattr(th, "NumpyHandler", Handler)
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
  out = save_params(str(tmp_path / "m"), params, {"step": 0}, host_in_place=True)
  assert made[0] == {"deepcopy_host_arrays": False}
  assert made[-1] == ({"deepcopy_host_arrays": False} if has_option else {})
  got = read_step_params(out)
  np.testing.assert_array_equal(got["w"], params["w"])
  np.testing.assert_array_equal(got["b"], params["b"])
