"""GRPO: `run(config, workdir)`, reinforcement learning with verifiable rewards.

Each step takes P prompts (`grpo_data.step_indices`), samples G completions of
each with the jitted sampler at per-completion temperatures (0.6, 0.8, 1.0,
1.2 for G = 4), scores them with plain-Python reward functions
(`jaxslm.train.rewards`), turns rewards into group-relative advantages, and
runs μ optimizer passes of the clipped-surrogate + k3-KL loss
(`jaxslm.train.grpo_loss`) on the batch.

LoRA during RL (Tina): the policy is the frozen base plus trainable adapters
(`lora.add_adapter`, trained through `lora.split`); rollouts sample straight
from base + adapters, never merged. The reference is a snapshot of the
*trainable* tree combined with the same frozen base: at the start the adapters
are exactly zero (B = 0), so the reference is the base with adapters off, and
no second copy of the base exists. Every `grpo.ref_update_every` steps the
snapshot is refreshed. Full-parameter GRPO is the same code with every leaf
trainable (then the snapshot is a full copy).

The first pass over a batch uses the policy's own log-probabilities (stopped
gradient) as the old ones, so the ratio is exactly 1 there; later passes use
that first pass's values. Log-probabilities are at temperature 1 (the policy),
whatever temperature sampled the tokens.

Checkpoints (`workdir/checkpoints`) hold the trainable tree, the optimizer
state with the reference snapshot, and in meta β, the step (which fixes ε, the
prompts and every sampling seed) and the config: `--resume` continues exactly.
`jaxslm.load(workdir)` gives base + adapters; at the end `adapters/` and
`export/` (merged) are written as in fine-tuning.

Several processes (`jaxslm.train.distributed`): process p samples the p-th
share of each step's prompts (`grpo_data.process_slice`; a group of G never
straddles two processes) on its own copy of the policy, with the seeds a
single process would use; the rewards of all processes are gathered, so the
advantages (any normalization) and the logged metrics are those of the whole
step; the rollout rows then form one global batch for the update. Process 0
alone logs and writes reports.
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm import checkpoint as ckpt
from jaxslm import paths
from jaxslm.config import ConfigDict
from jaxslm.errors import UserError
from jaxslm.train import grpo_data, memory, parallel, reporting
from jaxslm.train.grpo_loss import (AGGREGATIONS, NORMALIZATIONS, adapt_beta, check_choice,
                                    clip_epsilon, group_advantages)
# Re-exported: `grpo.policy_logprobs` and `grpo.grpo_step` are the documented names.
from jaxslm.train.grpo_step import (_reference_jit, _step_jit, grpo_step,  # noqa: F401
                                    policy_logprobs, reference_logprobs)
from jaxslm.train.optim import make_optimizer
from jaxslm.train.pretrain import TrainingDiverged, is_main_process, log
from jaxslm.train.outputs import _fmt
from jaxslm.train.signals import StopRequest

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
  parallel.mesh_shape(config.mesh.data, config.mesh.get("fsdp", 1), devices)
  grpo_data.process_slice(g.prompts_per_step, 0, jax.process_count())
  if config.method == "lora" and config.lora.rank < 1:
    raise UserError(f"lora.rank={config.lora.rank} must be >= 1.")
  reward_setup(config)
  make_optimizer(train_section(config))


# ------------------------------------------------------------------ the run
def build_policy(config: ConfigDict):
  """(model_cfg, params, tokenizer, base, trainable kind) of init_from + the method."""
  from jaxslm import lora
  from jaxslm.train.finetune import load_base, lora_config
  model_cfg, params, tok, base = load_base(config)
  if config.method == "full":
    return model_cfg, params, tok, base, "all"
  params = lora.add_adapter(params, lora_config(config),
                            jax.random.PRNGKey(config.train.seed + 17))
  return model_cfg, params, tok, base, "last"


def run(config: ConfigDict, workdir: str, *, resume: bool = False) -> dict[str, Any]:
  """GRPO per `config`; checkpoints, metrics.jsonl, curves.png, adapters/ and export/."""
  from jaxslm import lora
  from jaxslm.data.templates import get_template
  from jaxslm.evaluation.metrics import format_compliance
  from jaxslm.train import rewards
  from jaxslm.train.finetune import write_outputs, write_summary
  g, t, d = config.grpo, config.train, config.data
  validate_config(config)
  paths.makedirs(workdir)
  checkpointer = ckpt.Checkpointer(ckpt.checkpoint_dir(workdir), keep=t.keep_checkpoints,
                                   async_save=False)
  latest = checkpointer.latest_step()
  if latest is not None and not resume:
    raise UserError(f"Workdir {workdir!r} already holds a checkpoint (step {latest}). Pass "
                    "--resume to continue it, or choose another --workdir.")
  config = ConfigDict(config.to_dict())
  if latest is not None:
    saved = checkpointer.read_meta(latest)
    config.init_from = saved["finetune"]["init_from"]
  model_cfg, params, tok, base, kind = build_policy(config)
  template = get_template(d.template)
  trainable, frozen = lora.split(params, kind)
  counts = lora.count_params(params, kind)
  log(f"Policy: {base.path} + {config.method} ({counts['trainable']:,} trainable of "
      f"{counts['total']:,} parameters, {counts['percent']:.3f}%), {model_cfg.dtype} compute")
  fns, weights = reward_setup(config)
  temps = temperatures(g)
  problems, source = grpo_data.load_problems(d, heldout=False, limit=d.train_problems)
  pool = grpo_data.encode_pool(problems, tok, template, budget=d.prompt_budget,
                               too_long=d.too_long, source=source)
  log(f"Prompts: {source}; {pool.truncated} truncated to {d.prompt_budget} tokens")
  eval_pool = None
  if config.eval.problems > 0:
    ep, esource = grpo_data.load_problems(d, heldout=True, limit=config.eval.problems)
    eval_pool = grpo_data.encode_pool(ep, tok, template, budget=d.prompt_budget,
                                      too_long="truncate", source=esource)
  tcfg = train_section(config)
  optimizer, schedule = _optimizer(tuple(sorted(tcfg.to_dict().items())))
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
  log(memory.grpo_estimate(
      model_cfg, trainable=trainable, frozen=frozen, opt_state=opt_state,
      rows_per_device=g.prompts_per_step * g.G // jax.device_count(), rollout_len=rollout_len,
      sample_prompts=len(mine), group=g.G, prompt_budget=d.prompt_budget,
      max_new_tokens=g.max_new_tokens, trainable_shardings=tr_sh, frozen_shardings=fr_sh,
      opt_shardings=opt_sh, where=f"mesh {dict(mesh.shape)}").line())
  beta, start, last = float(g.beta), 0, {}
  if latest is not None:
    saved_state = {"opt": opt_state, "ref": ref_trainable}
    trainable, state, meta = checkpointer.restore(
        latest, ckpt.abstract_like(trainable, tr_sh),
        ckpt.abstract_like(saved_state, {"opt": opt_sh, "ref": tr_sh}))
    opt_state, ref_trainable = state["opt"], state["ref"]
    start, beta = int(meta["step"]), float(meta["grpo"]["beta"])
    last = dict(meta.get("metrics") or {})
    log(f"Resumed from step {start} (beta {beta:.4g})")
  trainable, frozen, opt_state, ref_trainable = parallel.put_sharded(
      (trainable, frozen, opt_state, ref_trainable), (tr_sh, fr_sh, opt_sh, tr_sh))
  dropout = config.method != "full" and config.lora.dropout > 0
  use_ref = g.beta > 0 or g.kl_target > 0   # beta 0 without a KL target: no reference pass
  step_fns = {first: functools.partial(
      _step_jit, model_cfg=model_cfg, optimizer=optimizer, aggregation=g.aggregation,
      norm_tokens=g.norm_tokens or g.max_new_tokens, first=first, dropout=dropout,
      use_ref=use_ref, shardings=parallel.Static((tr_sh, opt_sh))) for first in (True, False)}
  ref_fn = functools.partial(_reference_jit, model_cfg=model_cfg)

  config_json = json.loads(config.to_json_best_effort())
  meta_base = {"finetune": {"method": config.method, "trainable": kind,
                            "init_from": paths.resolve(base.path), "template": d.template},
               "config": config_json, "model": model_cfg.to_dict(), "tokenizer": tok.spec(),
               "params": counts, "data": {"source": source, "truncated": pool.truncated},
               "jax_version": jax.__version__}
  saved_step = [start]

  def save(step, metrics):
    if step != saved_step[0]:
      checkpointer.save(step, trainable, {"opt": opt_state, "ref": ref_trainable},
                        {**meta_base, "step": step, "metrics": metrics,
                         "grpo": {"beta": beta, "eps": clip_epsilon(step, g.eps0, g.eps_min,
                                                                   g.eps_tau)}})
      saved_step[0] = step

  def evaluate() -> dict:
    """Every process evaluates the whole held-out pool on its own copy of the
    params (the same numbers everywhere, no communication)."""
    if eval_pool is None:
      return {}
    return grpo_data.evaluate_heldout(
        model_cfg, parallel.local_replica(parallel.gathered(lora.combine(trainable, frozen), mesh)),
        tok, template,
        eval_pool, fns, weights, max_new_tokens=config.eval.max_new_tokens,
        batch_size=config.eval.batch_size, extractor=config.rewards.extractor,
        samples=config.eval.get("samples", 0), temperature=config.eval.get("temperature", 1.0))

  metrics_log = reporting.MetricsLog(paths.join(workdir, "metrics.jsonl"), is_main_process())
  metrics_log.truncate_after(start if start else -1)
  progress = reporting.Progress(t.steps, is_main_process())
  stop = StopRequest().install()
  step, interrupted = start, False
  first_eval = last_eval = None
  try:
    if start == 0:
      first_eval = evaluate()
      if first_eval:
        metrics_log.write({"step": 0, **first_eval})
        log(f"step 0: {_fmt(first_eval)}")
    while step < t.steps:
      eps = clip_epsilon(step, g.eps0, g.eps_min, g.eps_tau)
      # ---- rollouts: this process's prompts, sampled on its own copy of the policy
      t0 = time.perf_counter()
      idx = grpo_data.step_indices(len(pool), g.prompts_per_step, t.seed, step)
      idx = idx[mine.start:mine.stop]
      ids = [pool.ids[i] for i in idx]
      # FSDP: a whole copy gathered on every device (a collective), freed by the `del`.
      policy = parallel.local_replica(parallel.gathered(lora.combine(trainable, frozen), mesh))
      gen = grpo_data.generate_for(
          model_cfg, policy, tok, template, ids, max_new_tokens=g.max_new_tokens,
          temperature=temps, n=g.G, top_p=g.top_p,
          seeds=[grpo_data.rollout_seed(t.seed, step, i) for i in mine])
      # Unsharded, it shares buffers with `trainable`, which the update donates:
      # no reference may outlive this line.
      del policy
      texts = [grpo_data.completion_text(c, tok, template) for c in gen.completions]
      prompts_rep = [pool.texts[i] for i in idx for _ in range(g.G)]
      golds_rep = [pool.golds[i] for i in idx for _ in range(g.G)]
      total, comps = rewards.compute(fns, weights, prompts_rep, texts, golds_rep)
      # Every process's rewards (in prompt order): advantages and logged means
      # are those of the whole step, as in a single-process run.
      rows = parallel.gather_rows({
          "total": total, "comps": comps,
          "correct": np.asarray([rewards.is_correct(x, y, extractor=config.rewards.extractor)
                                 for x, y in zip(texts, golds_rep)], np.float64),
          "format": np.asarray([format_compliance(x, template.answer_format).strict
                                if template.answer_format != "none" else False
                                for x in texts], np.float64),
          "length": np.asarray([len(c.tokens) for c in gen.completions], np.float64),
          "prompt_len": np.repeat(np.asarray([len(x) for x in gen.prompt_tokens], np.float64),
                                  g.G)})
      rewards_bg = rows["total"].reshape(g.prompts_per_step, g.G)
      adv_n = group_advantages(rewards_bg, g.adv_norm).reshape(-1).astype(np.float32)
      adv_n = adv_n[mine.start * g.G:mine.stop * g.G]
      # Shapes from every process's lengths, so all build the same global arrays.
      slots = grpo_data.rollout_lengths(
          rows["prompt_len"].astype(int).tolist(), rows["length"].astype(int).tolist(),
          prompt_budget=d.prompt_budget, max_new_tokens=g.max_new_tokens)
      batch = grpo_data.rollout_batch(gen.prompt_tokens, [c.tokens for c in gen.completions],
                                      g.G, tok.pad_id, *slots)
      t_sample = time.perf_counter() - t0
      # ---- learning: the rows of every process form one global batch
      t1 = time.perf_counter()
      n = g.prompts_per_step * g.G
      if prefix_sh is not batch_sh:   # replicated: every process feeds all the prompts
        batch.update(parallel.gather_rows({k: batch[k] for k in ("prefix", "prefix_mask")}))
      batch = {k: parallel.global_array(
          v, prefix_sh if k.startswith("prefix") else batch_sh,
          ((g.prompts_per_step if k.startswith("prefix") else n), v.shape[1]))
          for k, v in batch.items()}
      adv_j = parallel.global_array(adv_n, parallel.batch_sharding(mesh, ndim=1), (n,))
      ref_logp = ref_fn(ref_trainable, frozen, batch) if use_ref else batch["mask"]
      old_logp = batch["mask"]   # not read by the first pass
      rng = jax.random.fold_in(jax.random.PRNGKey(t.seed + 1), step)
      for k in range(g.mu):
        trainable, opt_state, m, logp = step_fns[k == 0](
            trainable, opt_state, frozen, batch, adv_j, old_logp, ref_logp,
            jnp.float32(eps), jnp.float32(beta if use_ref else 0.0), jax.random.fold_in(rng, k))
        if k == 0:
          old_logp = logp
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      t_learn = time.perf_counter() - t1
      step += 1
      if not all(math.isfinite(v) for v in m.values()):
        raise TrainingDiverged(f"GRPO diverged at step {step}: {m}. The last good checkpoint is "
                               f"step {checkpointer.latest_step()}; lower train.lr and --resume.")
      total, comps = rows["total"], rows["comps"]
      record = {
          "step": step, "reward_mean": float(total.mean()), "reward_std": float(total.std()),
          **{f"reward_{k}_mean": float(v.mean()) for k, v in comps.items()},
          **{f"reward_{k}_std": float(v.std()) for k, v in comps.items()},
          "accuracy": float(np.mean(rows["correct"])),
          "format": float(np.mean(rows["format"])),
          "kl": m["kl"] if use_ref else None, "beta": beta, "eps": eps,
          "clip_frac": m["clip_frac"], "loss": m["loss"], "pg_loss": m["pg_loss"],
          "grad_norm": m["grad_norm"], "entropy": m["entropy"],
          "completion_len": float(np.mean(rows["length"])),
          "zero_signal_frac": float(np.mean(np.ptp(rewards_bg, axis=1) == 0)),
          "sample_s": t_sample, "learn_s": t_learn,
          "completions_per_s": n / (t_sample + t_learn), "lr": float(schedule(step - 1))}
      if use_ref and g.kl_target > 0:
        beta = adapt_beta(beta, m["kl"], g.kl_target, g.beta_factor)
      if g.ref_update_every > 0 and step % g.ref_update_every == 0:
        ref_trainable = jax.tree.map(jnp.copy, trainable)
      if step % t.log_every == 0 or step == t.steps:
        progress.update(step, reward=round(record["reward_mean"], 3),
                        acc=round(record["accuracy"], 3), kl=round(m["kl"], 4) + 0.0,
                        s=round(t_sample + t_learn, 2))
      if config.eval.every > 0 and (step % config.eval.every == 0 or step == t.steps):
        last_eval = evaluate()
        record.update(last_eval)
        progress.newline()
        log(f"step {step}: {_fmt(last_eval)}")
      metrics_log.write(record)
      last = record
      if step % t.checkpoint_every == 0 or step == t.steps:
        save(step, last)
      if parallel.any_process(stop.requested):
        save(step, last)
        interrupted = True
        progress.newline()
        log(f"Interrupted: saved step {step}; continue with --resume.")
        break
  finally:
    checkpointer.wait()
    stop.restore()
  progress.newline()
  params = lora.combine(trainable, frozen)
  records = metrics_log.read()
  result = {"workdir": workdir, "step": step, "last": last, "interrupted": interrupted,
            "params": params, "model_cfg": model_cfg, "tokenizer": tok, "counts": counts,
            "records": records, "trainable": trainable, "beta": beta}
  if not interrupted and step >= t.steps:
    whole = parallel.gathered(params, mesh)   # FSDP: a collective, every process takes part
    result.update(write_outputs(workdir, config, whole, kind, meta_base, last))
    del whole
    summary = {"method": config.method, "step": step, "params": counts, "source": source,
               "first_eval": first_eval or _first_eval(records), "last_eval": last_eval,
               "last": last}
    write_summary(workdir, summary)
    result["summary"] = summary
  if is_main_process():
    result["plot"] = reporting.plot_series(records, paths.join(workdir, "curves.png"), [
        ("reward", ["reward_mean", "eval_reward"]),
        ("accuracy", ["accuracy", "eval_accuracy", "format"]), ("KL", ["kl"])])
  checkpointer.close()
  return result


def _first_eval(records: list[dict]) -> dict | None:
  for r in records:
    if r.get("step") == 0 and "eval_accuracy" in r:
      return r
  return None
