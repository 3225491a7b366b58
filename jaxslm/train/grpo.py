"""GRPO: `run(config, workdir)`, reinforcement learning with verifiable rewards.

Each step takes P prompts (`grpo_data.step_indices`), samples G completions of
each with the jitted sampler at per-completion temperatures (0.6, 0.8, 1.0,
1.2 for G = 4), scores them with plain-Python reward functions
(`jaxslm.train.rewards`), turns rewards into group-relative advantages, and
runs μ optimizer passes of the clipped-surrogate + k3-KL loss
(`jaxslm.train.grpo_loss`) on the batch.

LoRA during RL (as in Tina, "Tiny Reasoning Models via LoRA"): the policy is the frozen base plus trainable adapters
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

Tools inside the rollout (`grpo.tools`, `jaxslm.train.grpo_rollouts`): with
"calculator" the sampler writes the value of each `<<expr=` as forced tokens,
with "agent" the ReAct loop appends each action's observation. A rollout row
keeps the exact ids the policy conditioned on, a mask of the tokens the model
wrote and the sampler's log-probabilities; the learning pass reads those ids
as they are, and the loss, KL, entropy, clip fraction and lengths count the
model's tokens only (tool tokens stay in the context). "sampler_logp_gap" logs
the mean |log p| difference between the first pass and the sampler on them.

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

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm import lora, quant
from jaxslm.config import ConfigDict
from jaxslm.errors import TrainingDiverged
from jaxslm.train import grpo_data, grpo_rollouts, parallel
from jaxslm.train.grpo_loss import adapt_beta, clip_epsilon, group_advantages
# Re-exported: the run's setup and configuration checks.
from jaxslm.train.grpo_setup import (METHODS, GRPORun, build_policy, eval_modes,  # noqa: F401
                                     reward_setup, setup, temperatures, train_section,
                                     validate_config)
# Re-exported: `grpo.policy_logprobs` and `grpo.grpo_step` are the documented names.
from jaxslm.train.grpo_step import grpo_step, policy_logprobs, reference_logprobs  # noqa: F401
from jaxslm.train.outputs import final_outputs
from jaxslm.train.session import Session, fmt_metrics, log


# ------------------------------------------------------------------ the run
def run(config: ConfigDict, workdir: str, *, resume: bool = False) -> dict[str, Any]:
  """GRPO per `config`; checkpoints, metrics.jsonl, curves.png, adapters/ and export/."""
  t = config.train
  validate_config(config)
  with Session(workdir, what="GRPO", keep=t.keep_checkpoints, resume=resume) as run:
    run.refuse_unless_resuming()
    rl = setup(config, run)
    run.open_log(rl.start, t.steps, rl.config)
    step, interrupted = rl.start, False
    if step == 0:
      rl.first_eval = evaluate(rl)
      if rl.first_eval:
        run.record({"step": 0, **rl.first_eval})
        log(f"step 0: {fmt_metrics(rl.first_eval)}")
    while step < t.steps:
      rollouts = sample_and_score(rl, step)
      m = learn(rl, rollouts, step)
      step += 1
      record = step_record(rl, rollouts, m, step)
      if not all(math.isfinite(v) for v in m.values()):
        raise TrainingDiverged(f"GRPO diverged at step {step}: {m}. The last good checkpoint is "
                               f"step {run.checkpointer.latest_step()}; lower train.lr and "
                               "--resume.")
      after_step(rl, m, step)
      if step % t.log_every == 0 or step == t.steps:
        run.progress.update(step, reward=round(record["reward_mean"], 3),
                            acc=round(record["accuracy"], 3), kl=round(m["kl"], 4) + 0.0,
                            s=round(record["sample_s"] + record["learn_s"], 2))
      if config.eval.every > 0 and (step % config.eval.every == 0 or step == t.steps):
        rl.last_eval = evaluate(rl)
        record.update(rl.last_eval)
        run.note(step, rl.last_eval)
      run.record(record)
      rl.last = record
      if step % t.checkpoint_every == 0 or step == t.steps:
        run.save(step, *saved_trees(rl, step))
      if run.stop_requested():
        run.interrupted(step, *saved_trees(rl, step))
        interrupted = True
        break
  run.finish()
  result = finish(rl, run, step, interrupted)
  run.close()
  return result


# ------------------------------------------------------------------ one step
@dataclasses.dataclass
class Rollouts:
  """One step's sampled completions, their rewards (every process's) and the
  learning batch (this process's rows)."""
  rows: dict            # gathered over processes: total, comps, correct, format, lengths
                        # (model-written, whole row), tool calls, tool cuts, budget cuts
  rewards_bg: np.ndarray
  adv_n: np.ndarray     # this process's advantages
  batch: dict           # this process's rollout rows (host arrays)
  sample_s: float


def sample_and_score(rl: GRPORun, step: int) -> Rollouts:
  """This process's prompts of the step, G completions each on its own copy of
  the policy, scored; advantages over every process's rewards."""
  from jaxslm.evaluation.metrics import format_compliance
  from jaxslm.train import rewards
  g, t, d = rl.config.grpo, rl.config.train, rl.config.data
  t0 = time.perf_counter()
  idx = grpo_data.step_indices(len(rl.pool), g.prompts_per_step, t.seed, step)
  idx = idx[rl.mine.start:rl.mine.stop]
  ids = [rl.pool.ids[i] for i in idx]
  # FSDP: a whole copy gathered on every device (a collective), freed by the `del`.
  policy = parallel.local_replica(parallel.gathered(lora.combine(rl.trainable, rl.frozen),
                                                    rl.mesh))
  if rollout_quantized(g):   # an int8 copy (adapters folded in); the float policy learns
    # the copy's notes (kernels too small, kept in float) are said at the first step only
    policy = quant.apply_quantize(lora.merge(policy), g.rollout_quantize,
                                  log=log if step == rl.start else _quiet)
  sampled = grpo_rollouts.sample(
      g.tools, rl.model_cfg, policy, rl.tok, rl.template, ids, group=g.G,
      max_new_tokens=g.max_new_tokens, temperatures=rl.temps, top_p=g.top_p,
      seeds=[grpo_data.rollout_seed(t.seed, step, i) for i in rl.mine],
      max_steps=g.agent_max_steps, max_tool_tokens=g.max_tool_tokens,
      token_budget=rollout_token_budget(g))
  # Unsharded, it shares buffers with `trainable`, which the update donates:
  # no reference may outlive this line.
  del policy
  texts = [r.text for r in sampled.rows]
  prompts_rep = [rl.pool.texts[i] for i in idx for _ in range(g.G)]
  golds_rep = [rl.pool.golds[i] for i in idx for _ in range(g.G)]
  total, comps = rewards.compute(rl.fns, rl.weights, prompts_rep, texts, golds_rep)
  fmt = rl.template.answer_format
  extractor = rl.config.rewards.extractor
  # Every process's rewards (in prompt order): advantages and logged means
  # are those of the whole step, as in a single-process run.
  rows = parallel.gather_rows({
      "total": total, "comps": comps,
      "correct": np.asarray([rewards.is_correct(x, y, extractor=extractor)
                             for x, y in zip(texts, golds_rep)], np.float64),
      "format": np.asarray([format_compliance(x, fmt).strict if fmt != "none" else False
                            for x in texts], np.float64),
      # lengths count the tokens the model wrote; tool tokens are counted apart
      "length": np.asarray([r.model.sum() for r in sampled.rows], np.float64),
      "row_len": np.asarray([len(r.tokens) for r in sampled.rows], np.float64),
      "tool_calls": np.asarray([r.tool_calls for r in sampled.rows], np.float64),
      "tool_cut": np.asarray([r.tool_cut for r in sampled.rows], np.float64),
      "budget_cut": np.asarray([r.budget_cut for r in sampled.rows], np.float64),
      "prompt_len": np.repeat(np.asarray([len(x) for x in sampled.prompt_ids], np.float64),
                              g.G)})
  rewards_bg = rows["total"].reshape(g.prompts_per_step, g.G)
  adv_n = group_advantages(rewards_bg, g.adv_norm).reshape(-1).astype(np.float32)
  adv_n = adv_n[rl.mine.start * g.G:rl.mine.stop * g.G]
  # Shapes from every process's lengths, so all build the same global arrays.
  slots = grpo_data.rollout_lengths(
      rows["prompt_len"].astype(int).tolist(), rows["row_len"].astype(int).tolist(),
      prompt_budget=d.prompt_budget, max_new_tokens=g.max_new_tokens)
  # The sampler's ids as they are (never decoded and encoded again), the
  # model-written mask and the sampler's log-probabilities.
  batch = grpo_data.rollout_batch(sampled.prompt_ids, [r.tokens for r in sampled.rows], g.G,
                                  rl.tok.pad_id, *slots,
                                  model_masks=[r.model for r in sampled.rows],
                                  logprobs=[r.logprobs for r in sampled.rows])
  return Rollouts(rows, rewards_bg, adv_n, batch, time.perf_counter() - t0)


def rollout_quantized(g: ConfigDict) -> bool:
  """Whether rollouts come from a quantized copy of the policy (grpo.rollout_quantize)."""
  return g.get("rollout_quantize", "none") not in ("none", None, "")


def rollout_token_budget(g: ConfigDict) -> int | None:
  """grpo.rollout_token_budget for the sampler: None (-1: from the device's memory) or >= 0."""
  value = g.get("rollout_token_budget", -1)
  return None if value == -1 else int(value)


def _quiet(message: str) -> None:
  """Rollout quantization's notes after the first step: said once already."""


def learn(rl: GRPORun, ro: Rollouts, step: int) -> dict:
  """μ optimizer passes over the step's rollouts; every process's rows form one
  global batch. Returns the last pass's metrics on the host, with its time."""
  g, t = rl.config.grpo, rl.config.train
  t1 = time.perf_counter()
  n = g.prompts_per_step * g.G
  batch = dict(ro.batch)
  if rl.prefix_sh is not rl.batch_sh:   # replicated: every process feeds all the prompts
    batch.update(parallel.gather_rows({k: batch[k] for k in ("prefix", "prefix_mask")}))
  batch = {k: parallel.global_array(
      v, rl.prefix_sh if k.startswith("prefix") else rl.batch_sh,
      ((g.prompts_per_step if k.startswith("prefix") else n), v.shape[1]))
      for k, v in batch.items()}
  adv_j = parallel.global_array(ro.adv_n, parallel.batch_sharding(rl.mesh, ndim=1), (n,))
  ref_logp = rl.ref_fn(rl.ref_trainable, rl.frozen, batch) if rl.use_ref else batch["mask"]
  # The old policy of the ratio: at the first pass the policy itself (the ratio is
  # exactly 1, `old_logp` unread), unless the rollouts came from a quantized copy:
  # then the sampler's log-probabilities, so the ratio corrects for the copy.
  quantized = rollout_quantized(g)
  old_logp = batch["sampler_logp"] if quantized else batch["mask"]
  eps = clip_epsilon(step, g.eps0, g.eps_min, g.eps_tau)
  rng = jax.random.fold_in(jax.random.PRNGKey(t.seed + 1), step)
  for k in range(g.mu):
    rl.trainable, rl.opt_state, m, logp = rl.step_fns[k == 0 and not quantized](
        rl.trainable, rl.opt_state, rl.frozen, batch, adv_j, old_logp, ref_logp,
        jnp.float32(eps), jnp.float32(rl.beta if rl.use_ref else 0.0), jax.random.fold_in(rng, k))
    if k == 0:
      old_logp, gap = logp, m["sampler_logp_gap"]
  m = {k: float(v) for k, v in jax.device_get({**m, "sampler_logp_gap": gap}).items()}
  m["learn_s"] = time.perf_counter() - t1
  return m


def step_record(rl: GRPORun, ro: Rollouts, m: dict, step: int) -> dict:
  """The metrics.jsonl record of `step` (rewards per component, accuracy,
  format, KL, β, ε, clip fraction, entropy, lengths, timing)."""
  g = rl.config.grpo
  total, comps = ro.rows["total"], ro.rows["comps"]
  n = g.prompts_per_step * g.G
  return {
      "step": step, "reward_mean": float(total.mean()), "reward_std": float(total.std()),
      **{f"reward_{k}_mean": float(v.mean()) for k, v in comps.items()},
      **{f"reward_{k}_std": float(v.std()) for k, v in comps.items()},
      "accuracy": float(np.mean(ro.rows["correct"])),
      "format": float(np.mean(ro.rows["format"])),
      "kl": m["kl"] if rl.use_ref else None, "beta": rl.beta,
      "eps": clip_epsilon(step - 1, g.eps0, g.eps_min, g.eps_tau),
      "clip_frac": m["clip_frac"], "ratio_mean": m["ratio_mean"], "loss": m["loss"],
      "pg_loss": m["pg_loss"],
      "grad_norm": m["grad_norm"], "entropy": m["entropy"],
      "completion_len": float(np.mean(ro.rows["length"])),
      "tool_tokens": float(np.mean(ro.rows["row_len"] - ro.rows["length"])),
      "tool_calls": float(np.mean(ro.rows["tool_calls"])),
      "tool_cut": int(np.sum(ro.rows["tool_cut"])),
      "budget_cut": int(np.sum(ro.rows["budget_cut"])),
      "sampler_logp_gap": m["sampler_logp_gap"],
      "zero_signal_frac": float(np.mean(np.ptp(ro.rewards_bg, axis=1) == 0)),
      "sample_s": ro.sample_s, "learn_s": m["learn_s"],
      "completions_per_s": n / (ro.sample_s + m["learn_s"]), "lr": float(rl.schedule(step - 1))}


def after_step(rl: GRPORun, m: dict, step: int) -> None:
  """β adapted towards the KL target; the reference refreshed every K steps."""
  g = rl.config.grpo
  if rl.use_ref and g.kl_target > 0:
    rl.beta = adapt_beta(rl.beta, m["kl"], g.kl_target, g.beta_factor)
  if g.ref_update_every > 0 and step % g.ref_update_every == 0:
    rl.ref_trainable = jax.tree.map(jnp.copy, rl.trainable)


def saved_trees(rl: GRPORun, step: int) -> tuple:
  """What a checkpoint holds: the trainable tree; AdamW state + reference; meta
  with β and the step (which fixes ε, the prompts and every sampling seed)."""
  g = rl.config.grpo
  return (rl.trainable, {"opt": rl.opt_state, "ref": rl.ref_trainable},
          {**rl.meta_base, "step": step, "metrics": rl.last,
           "grpo": {"beta": rl.beta, "eps": clip_epsilon(step, g.eps0, g.eps_min, g.eps_tau)}})


def evaluate(rl: GRPORun) -> dict:
  """Held-out problems, greedy (and sampled pass@1 with eval.samples), in each
  tool mode of eval.tools: the first writes "eval_accuracy" etc., every other
  mode "eval_<mode>_accuracy" etc. Every process evaluates the whole pool on its
  own copy of the params (the same numbers everywhere, no communication)."""
  if rl.eval_pool is None:
    return {}
  e, g = rl.config.eval, rl.config.grpo
  params = parallel.local_replica(parallel.gathered(lora.combine(rl.trainable, rl.frozen), rl.mesh))
  out = {}
  for k, mode in enumerate(eval_modes(rl.config)):
    res = grpo_data.evaluate_heldout(
        rl.model_cfg, params, rl.tok, rl.template, rl.eval_pool, rl.fns, rl.weights,
        max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
        extractor=rl.config.rewards.extractor, samples=e.get("samples", 0),
        temperature=e.get("temperature", 1.0), tools=mode, max_steps=g.agent_max_steps,
        max_tool_tokens=g.max_tool_tokens)
    out.update(res if k == 0 else {"eval_" + f"{mode}_" + key[len("eval_"):]: v
                                   for key, v in res.items() if key != "eval_problems"})
  return out


def finish(rl: GRPORun, run: Session, step: int, interrupted: bool) -> dict:
  """The result; after the last step also adapters/, export/, summary.json; curves.png."""
  config = rl.config
  params = lora.combine(rl.trainable, rl.frozen)
  records = run.metrics_log.read()
  result = {"workdir": run.workdir, "step": step, "last": rl.last, "interrupted": interrupted,
            "params": params, "model_cfg": rl.model_cfg, "tokenizer": rl.tok,
            "counts": rl.counts, "records": records, "trainable": rl.trainable, "beta": rl.beta}
  if not interrupted and step >= config.train.steps:
    summary = {"method": config.method, "step": step, "params": rl.counts, "source": rl.source,
               "first_eval": rl.first_eval or _first_eval(records), "last_eval": rl.last_eval,
               "last": rl.last}
    result.update(final_outputs(run.workdir, config, params, rl.mesh, rl.kind, rl.meta_base,
                                rl.last, summary))
  result["plot"] = run.plot("curves.png", [
      ("reward", ["reward_mean", "eval_reward"]),
      ("accuracy", ["accuracy", "eval_accuracy", "format"]), ("KL", ["kl"])])
  return result


def _first_eval(records: list[dict]) -> dict | None:
  for r in records:
    if r.get("step") == 0 and "eval_accuracy" in r:
      return r
  return None
