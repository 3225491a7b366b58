"""Pure training and evaluation step functions."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxslm.models import Decoder, ModelConfig
from jaxslm.train import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: optimizer updates done
  params: Any            # nested dict, param_dtype (fp32 master weights)
  opt_state: Any
  rng: jax.Array         # uint32[2] raw PRNG key, split every step


def create_state(params, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), rng=jax.random.PRNGKey(seed + 1))


def token_loss(model_cfg: ModelConfig, params, tokens_bt1: jax.Array):
  """Mean next-token cross entropy (float32) over a [B, T+1] window batch."""
  inputs_bt, targets_bt = tokens_bt1[:, :-1], tokens_bt1[:, 1:]
  logits_btv = Decoder(model_cfg).apply({"params": params}, inputs_bt)
  losses_bt = optax.softmax_cross_entropy_with_integer_labels(logits_btv, targets_bt)
  return jnp.mean(losses_bt)


def train_step(state: TrainState, batch_abt1: jax.Array, *, model_cfg: ModelConfig,
               optimizer: optax.GradientTransformation, schedule) -> tuple[TrainState, dict]:
  """One optimizer update from `A` accumulated micro-batches `[A, B, T+1]`."""
  grad_fn = jax.value_and_grad(lambda p, b: token_loss(model_cfg, p, b))

  def micro(carry, tokens_bt1):
    loss_sum, grad_sum = carry
    loss, grads = grad_fn(state.params, tokens_bt1)
    return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  (loss_sum, grad_sum), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), batch_abt1)
  n = batch_abt1.shape[0]
  loss, grads = loss_sum / n, jax.tree.map(lambda g: g / n, grad_sum)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  rng, _ = jax.random.split(state.rng)
  # The norm of the *updated* params makes a NaN update visible at this step,
  # before it could be checkpointed (the loss only shows it one step later).
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
             "param_norm": optax.tree.norm(params)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics


def eval_step(params, tokens_bt1: jax.Array, *, model_cfg: ModelConfig) -> jax.Array:
  """Mean cross entropy on one validation batch."""
  return token_loss(model_cfg, params, tokens_bt1)


def state_shardings(abstract: TrainState, mesh) -> TrainState:
  """Shardings of a train state: params and optimizer moments by the axis
  rules of `parallel`, step and RNG replicated."""
  return TrainState(step=parallel.replicated(mesh), rng=parallel.replicated(mesh),
                    params=parallel.tree_shardings(abstract.params, mesh),
                    opt_state=parallel.tree_shardings(abstract.opt_state, mesh))


def jit_train_step(model_cfg: ModelConfig, optimizer, schedule, state_sh: TrainState, mesh):
  """`train_step` jitted once with explicit shardings and donated state.

  The batch `[A, B, T+1]` is split over the mesh's batch axes along B.
  Returns (step_fn, batch_sharding).
  """
  batch_sh = parallel.batch_sharding(mesh, batch_dim=1, ndim=3)
  fn = jax.jit(functools.partial(train_step, model_cfg=model_cfg, optimizer=optimizer,
                                 schedule=schedule),
               in_shardings=(state_sh, batch_sh),
               out_shardings=(state_sh, parallel.replicated(mesh)), donate_argnums=0)
  return fn, batch_sh
