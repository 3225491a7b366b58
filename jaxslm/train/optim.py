"""AdamW with linear warmup + cosine decay, global-norm clipping, and weight
decay only on matrices (never on norms or biases)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxslm.errors import UserError


def lr_schedule(peak_lr: float, min_lr: float, warmup_steps: int, decay_steps: int):
  """lr(step) for the 0-based optimizer step:

    step < warmup:           peak · (step + 1) / warmup
    warmup <= step <= decay: min + ½(1 + cos(π·(step − warmup)/(decay − warmup)))·(peak − min)
    step > decay:            min
  """
  if warmup_steps < 0 or decay_steps < warmup_steps:
    raise UserError(f"Schedule needs 0 <= warmup_steps ({warmup_steps}) <= decay_steps "
                     f"({decay_steps}); lower train.warmup_steps or raise train.decay_steps.")
  if min_lr > peak_lr:
    raise UserError(f"train.min_lr={min_lr} is above train.lr={peak_lr}; it must not be.")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * (step + 1) / max(warmup_steps, 1)
    ratio = jnp.clip((step - warmup_steps) / max(decay_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = min_lr + 0.5 * (1.0 + jnp.cos(jnp.pi * ratio)) * (peak_lr - min_lr)
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule


def decay_mask(params):
  """True for leaves that get weight decay: matrices (ndim >= 2) only."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(train_cfg) -> tuple[optax.GradientTransformation, callable]:
  """The optimizer and its schedule, from a `config.train` section."""
  decay_steps = train_cfg.decay_steps or train_cfg.steps
  if not train_cfg.decay_steps and train_cfg.steps < train_cfg.warmup_steps:
    raise UserError(f"train.steps={train_cfg.steps} (the decay length, as train.decay_steps is 0) "
                    f"is below train.warmup_steps={train_cfg.warmup_steps}. For a short run, set "
                    f"--config.train.warmup_steps={train_cfg.steps // 10} (a tenth of the "
                    f"steps), or raise train.steps.")
  schedule = lr_schedule(train_cfg.lr, train_cfg.min_lr, train_cfg.warmup_steps, decay_steps)
  chain = []
  if train_cfg.grad_clip and train_cfg.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(train_cfg.grad_clip))
  chain.append(optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                           weight_decay=train_cfg.weight_decay, mask=decay_mask))
  return optax.chain(*chain), schedule
