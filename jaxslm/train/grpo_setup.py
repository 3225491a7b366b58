"""GRPO's configuration checks and setup: the policy (base + method), prompt
pools, rewards, optimizer, mesh and shardings and jitted steps of one run,
restored from its checkpoint on resume (`setup` -> `GRPORun`)."""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp

from jaxslm import checkpoint as ckpt
from jaxslm import lora, paths
from jaxslm.config import ConfigDict
from jaxslm.errors import UserError
from jaxslm.loading import build_params, load_base
from jaxslm.train import grpo_data, grpo_rollouts, memory, parallel
from jaxslm.quant import QUANTIZE_CHOICES
from jaxslm.sampling import batching
from jaxslm.train.grpo_loss import AGGREGATIONS, NORMALIZATIONS, check_choice
from jaxslm.train.grpo_step import _reference_jit, _step_jit
from jaxslm.train.optim import make_optimizer
from jaxslm.train.session import Session, log

METHODS = ("lora", "full")


@functools.lru_cache(maxsize=16)
def _optimizer(settings: tuple):
  return make_optimizer(ConfigDict(dict(settings)))


# ------------------------------------------------------------------ config
def train_section(config: ConfigDict) -> ConfigDict:
  """The `train` section with the warmup fraction resolved into steps."""
  t = ConfigDict(config.train.to_dict())
  with t.unlocked():
    t.warmup_steps = int(round(t.warmup_ratio * t.steps))
    t.decay_steps = 0
  return t


def temperatures(g) -> list[float]:
  temps = list(g.temperatures) if isinstance(g.temperatures, (tuple, list)) else [g.temperatures]
  if len(temps) == 1:
    temps = temps * g.G
  if len(temps) != g.G:
    raise UserError(f"grpo.temperatures has {len(temps)} values for grpo.G={g.G} completions "
                    "per prompt; give one value, or exactly G (e.g. (0.6, 0.8, 1.0, 1.2)).")
  return [float(x) for x in temps]


def reward_setup(config: ConfigDict):
  """({name: fn}, {name: weight}) from the `rewards` section."""
  from jaxslm.train import rewards
  r = config.rewards
  names, weights = list(r.names), list(r.weights)
  if len(names) != len(weights) or not names:
    raise UserError(f"rewards.names={tuple(names)} and rewards.weights={tuple(weights)} must be "
                    "non-empty and of the same length (one weight per reward).")
  fns = {}
  for name in names:
    fn = rewards.resolve(name)
    if name == "accuracy" and r.extractor != "solution":
      fn = functools.partial(rewards.accuracy_reward, extractor=r.extractor)
    fns[name] = fn
  return fns, dict(zip(names, [float(w) for w in weights]))


def eval_modes(config: ConfigDict) -> list[str]:
  """The tool modes of the held-out evaluation: eval.tools (comma-separated), or
  by default the rollouts' mode (grpo.tools) and, when that uses a tool, none."""
  mode = config.grpo.tools
  raw = config.eval.get("tools", "")
  modes = [m.strip() for m in raw.split(",") if m.strip()] if raw else \
      [mode] + (["none"] if mode != "none" else [])
  for m in modes:
    grpo_rollouts.check_mode("eval.tools", m)
    if m == "agent" and mode != "agent":
      raise UserError(f"eval.tools={raw!r} asks for agent episodes, but the prompts are "
                      f"data.template={config.data.template!r}, not an agent format; drop "
                      "'agent' from eval.tools or train with grpo.tools=agent.")
  if len(set(modes)) != len(modes):
    raise UserError(f"eval.tools={raw!r} names a mode twice; list each once.")
  return modes


def validate_config(config: ConfigDict) -> None:
  g, t = config.grpo, config.train
  if config.method not in METHODS:
    raise UserError(f"method={config.method!r}; valid methods for GRPO: {', '.join(METHODS)}.")
  if not config.init_from:
    raise UserError("init_from is empty: pass --config.init_from=CHECKPOINT (a pretraining or "
                    "fine-tuning workdir, a step directory or an exported/converted model).")
  if g.G < 2:
    raise UserError(f"grpo.G={g.G}: group-relative advantages need at least 2 completions per "
                    "prompt (a group of one has no spread); set grpo.G >= 2 (the study uses 4).")
  for section, name in (("grpo", "prompts_per_step"), ("grpo", "max_new_tokens"), ("grpo", "mu"),
                        ("train", "steps"), ("train", "log_every"), ("train", "checkpoint_every"),
                        ("train", "keep_checkpoints"), ("data", "prompt_budget")):
    if config[section][name] <= 0:
      raise UserError(f"{section}.{name}={config[section][name]} must be a positive integer.")
  check_choice("grpo.adv_norm", g.adv_norm, NORMALIZATIONS)
  check_choice("grpo.aggregation", g.aggregation, AGGREGATIONS)
  check_choice("grpo.rollout_quantize", g.get("rollout_quantize", "none"), QUANTIZE_CHOICES)
  template = grpo_rollouts.prompt_template(config.data.template, g.tools)
  eval_modes(config)
  budget = g.get("rollout_token_budget", -1)
  if isinstance(budget, bool) or not isinstance(budget, int) or budget < -1:
    raise UserError(f"grpo.rollout_token_budget={budget!r}: expected -1 (from the device's "
                    "memory), 0 (one sampler call per step) or a positive number of cache slots.")
  for name in ("agent_max_steps", "max_tool_tokens"):
    if g[name] < 1:
      raise UserError(f"grpo.{name}={g[name]} must be a positive integer.")
  if g.tools == "agent" and config.rewards.extractor != template.extractor:
    raise UserError(f"grpo.tools=agent with rewards.extractor={config.rewards.extractor!r}: "
                    f"agent episodes end in 'Final Answer: N'; set rewards.extractor="
                    f"{template.extractor}.")
  temperatures(g)
  if not 0 <= t.warmup_ratio <= 1:
    raise UserError(f"train.warmup_ratio={t.warmup_ratio} must lie in [0, 1].")
  if g.eps0 <= 0 or g.eps_min < 0:
    raise UserError(f"grpo.eps0={g.eps0}, grpo.eps_min={g.eps_min}: the clip range must be > 0.")
  if g.beta < 0:
    raise UserError(f"grpo.beta={g.beta} must be >= 0 (0 drops the KL term).")
  rows, devices = g.prompts_per_step * g.G, jax.device_count()
  if rows % devices:
    raise UserError(f"grpo.prompts_per_step * grpo.G = {rows} completions must be divisible by "
                    f"the {devices} devices (data parallel); change grpo.prompts_per_step.")
  accum = g.get("grad_accum", 1)
  if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1 \
      or g.prompts_per_step % accum:
    raise UserError(f"grpo.grad_accum={accum!r} must be a positive integer that divides "
                    f"grpo.prompts_per_step={g.prompts_per_step} (each micro-batch holds whole "
                    "groups).")
  if (g.prompts_per_step // accum * g.G) % devices:
    raise UserError(f"grpo.grad_accum={accum}: a micro-batch of {g.prompts_per_step // accum} "
                    f"prompts x G {g.G} rows must be divisible by the {devices} devices; "
                    "lower grpo.grad_accum.")
  parallel.mesh_shape(config.mesh.data, config.mesh.get("fsdp", 1), devices)
  grpo_data.process_slice(g.prompts_per_step, 0, jax.process_count())
  if config.method == "lora" and config.lora.rank < 1:
    raise UserError(f"lora.rank={config.lora.rank} must be >= 1.")
  reward_setup(config)
  make_optimizer(train_section(config))


def grad_accum(g: ConfigDict) -> int:
  """grpo.grad_accum (1 in configs written before it existed)."""
  return int(g.get("grad_accum", 1))


def memory_advice(g: ConfigDict, need: int, free: int) -> str:
  """What to change when a GRPO step needs `need` bytes with `free` free: the
  smallest grpo.grad_accum that divides the work into small enough micro-batches
  (their memory is about 1/K of the step's), or what else to lower."""
  k, devices = grad_accum(g), jax.device_count()
  want = k * need / max(free, 1)
  fits = [j for j in range(k + 1, g.prompts_per_step + 1)
          if g.prompts_per_step % j == 0 and (g.prompts_per_step // j * g.G) % devices == 0
          and j >= want]
  if fits:
    return f"set grpo.grad_accum={fits[0]} (the same update in micro-batches)"
  return ("lower grpo.prompts_per_step, grpo.G or grpo.max_new_tokens (grpo.grad_accum cannot "
          "split this step finely enough)")


def _rows(batch) -> str:
  """A rollout batch's shape, for the memory account's line."""
  (n, m), (p, lp) = batch["suffix"].shape, batch["prefix"].shape
  return f"{n} rows x {m} completion slots, {p} prompts x {lp} prefix slots"


@dataclasses.dataclass
class GRPORun:
  """One GRPO run's policy, prompts, jitted functions and mutable state."""
  config: ConfigDict
  model_cfg: Any
  tok: Any
  template: Any
  kind: str
  counts: dict
  trainable: Any        # the trained leaves (adapters, or every leaf)
  frozen: Any           # the rest of the policy (the base, for LoRA)
  opt_state: Any
  ref_trainable: Any    # the reference: a snapshot of the trainable leaves
  beta: float
  pool: Any
  eval_pool: Any
  source: str
  fns: dict
  weights: dict
  temps: list
  mesh: Any
  batch_sh: Any
  prefix_sh: Any
  mine: slice           # this process's share of each step's prompts
  use_ref: bool
  step_fns: dict
  ref_fn: Any
  schedule: Any
  meta_base: dict
  start: int = 0
  last: dict = dataclasses.field(default_factory=dict)
  first_eval: dict | None = None
  last_eval: dict | None = None


def build_policy(config: ConfigDict):
  """(model_cfg, params, tokenizer, base, trainable kind) of init_from + the method."""
  model_cfg, params, tok, base = load_base(config)
  params, kind = build_params(config, params, seed=config.train.seed)
  return model_cfg, params, tok, base, kind


def setup(config: ConfigDict, run: Session) -> GRPORun:
  """Policy, prompt pools, rewards, optimizer, mesh and shardings, jitted steps;
  restored on resume."""
  g, d = config.grpo, config.data
  config = ConfigDict(config.to_dict())
  if run.saved_meta is not None:
    config.init_from = run.saved_meta["finetune"]["init_from"]
  model_cfg, params, tok, base, kind = build_policy(config)
  template = grpo_rollouts.prompt_template(d.template, g.tools)
  trainable, frozen = lora.split(params, kind)
  counts = lora.count_params(params, kind)
  log(f"Policy: {base.path} + {config.method} ({counts['trainable']:,} trainable of "
      f"{counts['total']:,} parameters, {counts['percent']:.3f}%), {model_cfg.dtype} compute")
  if g.get("rollout_quantize", "none") != "none":
    log(f"Rollouts: sampled from a {g.rollout_quantize} copy of the policy, adapters merged "
        f"into it each step; the learning pass stays in {model_cfg.dtype}, its ratio taken "
        "against the sampler's log-probabilities")
  fns, weights = reward_setup(config)
  problems, source = grpo_data.load_problems(d, heldout=False, limit=d.train_problems)
  pool = grpo_data.encode_pool(problems, tok, template, budget=d.prompt_budget,
                               too_long=d.too_long, source=source)
  log(f"Prompts: {source}; {pool.truncated} truncated to {d.prompt_budget} tokens; "
      f"tools: {g.tools}")
  eval_pool = None
  if config.eval.problems > 0:
    ep, esource = grpo_data.load_problems(d, heldout=True, limit=config.eval.problems)
    eval_pool = grpo_data.encode_pool(ep, tok, template, budget=d.prompt_budget,
                                      too_long="truncate", source=esource)
  optimizer, schedule = _optimizer(tuple(sorted(train_section(config).to_dict().items())))
  opt_state = optimizer.init(trainable)
  ref_trainable = jax.tree.map(jnp.copy, trainable)
  # The update's batch is split over every device ("data" x "fsdp"); with
  # mesh.fsdp > 1 the frozen base, the trainable tree, the reference snapshot
  # and AdamW state are split over "fsdp" too. Each process samples its share
  # of the prompts on a whole copy of the policy (gathered when split).
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.get("fsdp", 1))
  batch_sh = parallel.batch_sharding(mesh)
  # The prompts (one row each, run once per group) split like the rows when they
  # divide evenly over the devices; otherwise every device runs all of them.
  prefix_sh = batch_sh if g.prompts_per_step % mesh.size == 0 else parallel.replicated(mesh)
  tr_sh, fr_sh, opt_sh = (parallel.tree_shardings(x, mesh) for x in (trainable, frozen, opt_state))
  mine = grpo_data.process_slice(g.prompts_per_step, jax.process_index(), jax.process_count())
  rollout_len = min(grpo_data.pad_to(d.prompt_budget + g.max_new_tokens), model_cfg.max_seq_len + 1)
  def estimate(accum: int):
    return memory.grpo_estimate(
        model_cfg, trainable=trainable, frozen=frozen, opt_state=opt_state,
        rows_per_device=max(g.prompts_per_step * g.G // jax.device_count() // accum, 1),
        grad_copies=2 if accum > 1 else 1, rollout_len=rollout_len,
        sample_prompts=len(mine), group=g.G, prompt_budget=d.prompt_budget,
        max_new_tokens=g.max_new_tokens, trainable_shardings=tr_sh, frozen_shardings=fr_sh,
        opt_shardings=opt_sh, where=f"mesh {dict(mesh.shape)}")
  est = estimate(grad_accum(g))
  log(est.line())
  free = batching.free_memory_bytes()
  if est.total > free:
    fits = [k for k in range(grad_accum(g) + 1, g.prompts_per_step + 1)
            if g.prompts_per_step % k == 0 and estimate(k).total <= free]
    fix = (f"set grpo.grad_accum={fits[0]} (the same update in micro-batches)" if fits else
           "lower grpo.prompts_per_step, grpo.G or grpo.max_new_tokens")
    log(f"Warning: the step's estimate ({memory.fmt_bytes(est.total)}) exceeds the "
        f"{memory.fmt_bytes(free)} free on {jax.devices()[0].platform}; {fix}.")
  beta, start, last = float(g.beta), 0, {}
  if run.latest is not None:
    saved_state = {"opt": opt_state, "ref": ref_trainable}
    trainable, state, meta = run.restore(
        ckpt.abstract_like(trainable, tr_sh),
        ckpt.abstract_like(saved_state, {"opt": opt_sh, "ref": tr_sh}))
    opt_state, ref_trainable = state["opt"], state["ref"]
    start, beta = int(meta["step"]), float(meta["grpo"]["beta"])
    last = dict(meta.get("metrics") or {})
    log(f"Resumed from step {start} (beta {beta:.4g})")
  trainable, frozen, opt_state, ref_trainable = parallel.put_sharded(
      (trainable, frozen, opt_state, ref_trainable), (tr_sh, fr_sh, opt_sh, tr_sh))
  dropout = config.method != "full" and config.lora.dropout > 0
  use_ref = g.beta > 0 or g.kl_target > 0   # beta 0 without a KL target: no reference pass
  # Compiled ahead per rollout shape: XLA's memory account of each is logged
  # before it runs, and an out-of-memory failure names the fix.
  accounted = functools.partial(memory.Accounted, log=log, advice=functools.partial(
      memory_advice, g), free=batching.free_memory_bytes)
  step_fns = {first: accounted(_step_jit, dict(
      model_cfg=model_cfg, optimizer=optimizer, aggregation=g.aggregation,
      norm_tokens=g.norm_tokens or g.max_new_tokens, first=first, dropout=dropout,
      use_ref=use_ref, shardings=parallel.Static((tr_sh, opt_sh)),
      kl_ratio_weighted=bool(g.kl_ratio_weighted), grad_accum=grad_accum(g)),
      what="GRPO learning step", describe=lambda *a: _rows(a[3]))
      for first in (True, False)}
  ref_fn = accounted(_reference_jit, dict(model_cfg=model_cfg, grad_accum=grad_accum(g)),
                     what="GRPO reference pass", describe=lambda *a: _rows(a[2]))
  meta_base = {"finetune": {"method": config.method, "trainable": kind,
                            "init_from": paths.resolve(base.path), "template": d.template},
               "config": json.loads(config.to_json_best_effort()), "model": model_cfg.to_dict(),
               "tokenizer": tok.spec(), "params": counts,
               "data": {"source": source, "truncated": pool.truncated},
               "jax_version": jax.__version__}
  return GRPORun(config, model_cfg, tok, template, kind, counts, trainable, frozen, opt_state,
                 ref_trainable, beta, pool, eval_pool, source, fns, weights, temperatures(g),
                 mesh, batch_sh, prefix_sh, mine, use_ref, step_fns,
                 ref_fn,
                 schedule, meta_base,
                 start, last)
