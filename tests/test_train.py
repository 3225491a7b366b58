import functools
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.config import base_config
from jaxslm.models import ModelConfig, init_params
from jaxslm.train import parallel
from jaxslm.train.optim import decay_mask, lr_schedule, make_optimizer
from jaxslm.train.step import create_state, token_loss, train_step


def test_schedule_matches_formula():
  peak, low, warm, decay = 1e-3, 1e-4, 10, 100
  f = lr_schedule(peak, low, warm, decay)
  for s in [0, 1, 5, 9, 10, 11, 50, 99, 100, 101, 500]:
    if s < warm:
      want = peak * (s + 1) / warm
    elif s > decay:
      want = low
    else:
      want = low + 0.5 * (1 + math.cos(math.pi * (s - warm) / (decay - warm))) * (peak - low)
    assert float(f(s)) == pytest.approx(want, rel=1e-6), s


def test_schedule_bad_values():
  with pytest.raises(ValueError, match="warmup_steps"):
    lr_schedule(1e-3, 1e-4, 50, 10)
  with pytest.raises(ValueError, match="min_lr"):
    lr_schedule(1e-3, 1e-2, 1, 10)


def test_weight_decay_skips_norms_and_biases():
  cfg = ModelConfig.preset("tiny", use_bias=True)
  mask = decay_mask(init_params(cfg, jax.random.PRNGKey(0)))
  assert mask["layers_0"]["attn"]["q_proj"]["kernel"]
  assert not mask["layers_0"]["attn"]["q_proj"]["bias"]
  assert not mask["layers_0"]["attn_norm"]["scale"]
  assert mask["embed"]


def _setup(accum=1, **train):
  cfg = ModelConfig.preset("tiny", dtype="float32")
  tc = base_config().train
  tc.update(steps=300, warmup_steps=10, **train)
  opt, sched = make_optimizer(tc)
  state = create_state(init_params(cfg, jax.random.PRNGKey(0)), opt, 0)
  step = jax.jit(functools.partial(train_step, model_cfg=cfg, optimizer=opt, schedule=sched))
  return cfg, state, step


def test_tiny_model_overfits_a_short_sequence():
  cfg, state, step = _setup(lr=1e-2, min_lr=1e-3, weight_decay=0.0)
  seq = jax.random.randint(jax.random.PRNGKey(5), (1, 1, 33), 0, cfg.vocab_size)
  for _ in range(300):
    state, m = step(state, seq)
  assert float(m["loss"]) < 0.1


def test_gradient_accumulation_equals_full_batch():
  cfg, s1, step = _setup()
  _, s2, _ = _setup()
  batch = jax.random.randint(jax.random.PRNGKey(1), (8, 17), 0, cfg.vocab_size)
  s1, m1 = step(s1, batch[None])                 # one micro-batch of 8
  s2, m2 = step(s2, batch.reshape(4, 2, 17))     # four micro-batches of 2
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6),
               s1.params, s2.params)


def test_fsdp_specs_and_divisibility_error():
  mesh = parallel.make_mesh(1, 1)
  assert parallel.spec_for("layers_0/attn/q_proj/kernel", (64, 64), mesh) == jax.sharding.PartitionSpec(None, None)
  assert parallel.logical_axes("mu/layers_3/mlp/down_proj/kernel", 2) == ("mlp", "embed")
  assert parallel.logical_axes("layers_0/attn_norm/scale", 1) == (None,)
  with pytest.raises(ValueError, match="mesh.fsdp"):
    parallel.make_mesh(1, 3)
  # A parameter dimension the fsdp axis does not divide is named.
  with pytest.raises(ValueError, match="up_proj.*not divisible"):
    parallel.spec_for("layers_0/mlp/up_proj/kernel", (63, 128),
                      type("M", (), {"shape": {"data": 1, "fsdp": 2}})())


DATA_PARALLEL = textwrap.dedent("""
  import functools, jax, jax.numpy as jnp, numpy as np
  from jaxslm.config import base_config
  from jaxslm.models import ModelConfig, init_params
  from jaxslm.train import parallel
  from jaxslm.train.optim import make_optimizer
  from jaxslm.train.step import create_state, jit_train_step, state_shardings
  assert jax.device_count() == 8, jax.devices()
  cfg = ModelConfig.preset("tiny", dtype="float32")
  tc = base_config().train; tc.update(steps=20, warmup_steps=2)
  opt, sched = make_optimizer(tc)
  two = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (2, 2, 16, 33), 0, cfg.vocab_size))
  batches = np.concatenate([two, two, two])  # revisited, so the loss must fall

  def run(devices, data, fsdp):
    mesh = parallel.make_mesh(data, fsdp, devices)
    abstract = jax.eval_shape(lambda: create_state(init_params(cfg, jax.random.PRNGKey(0)), opt, 0))
    sh = state_shardings(abstract, mesh)
    state = jax.jit(lambda: create_state(init_params(cfg, jax.random.PRNGKey(0)), opt, 0),
                    out_shardings=sh)()
    step, bsh = jit_train_step(cfg, opt, sched, sh, mesh)
    losses = []
    for b in batches:
      state, m = step(state, parallel.global_array(b, bsh, b.shape))
      losses.append(float(m["loss"]))
    if fsdp > 1:
      k = state.params["layers_0"]["mlp"]["up_proj"]["kernel"]
      assert len(k.sharding.device_set) == 8 and k.addressable_shards[0].data.shape[0] == 64 // fsdp
    return losses, jax.device_get(state.params)

  one, p1 = run(jax.devices()[:1], 1, 1)
  dp, p8 = run(jax.devices(), 8, 1)
  fs, p4 = run(jax.devices(), 4, 2)
  print("losses", one, dp, fs)
  np.testing.assert_allclose(one, dp, rtol=1e-5)
  np.testing.assert_allclose(one, fs, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p4)
  assert one[-1] < one[0]
  print("OK")
""")


def test_data_parallel_8_devices_matches_1_device():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", DATA_PARALLEL], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr
