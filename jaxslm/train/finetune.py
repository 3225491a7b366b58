"""Supervised fine-tuning: `run(config, workdir)` with LoRA, QLoRA, stacked LoRA or full.

One trainer for every method; the method only decides the parameter-tree
transform applied to the base and which leaves train:

  full     every leaf trains (AdamW over the whole tree)
  lora     adapters on the `lora.targets` kernels (`jaxslm.lora.add_adapter`); base frozen
  qlora    base kernels stored as NF4 (`jaxslm.quant.quantize_params`), LoRA on top
  stacked  adapters of an earlier run (`stack_from`) loaded and frozen, a new one trains

The optimizer state and gradients exist only for the trainable tree
(`lora.split`): the frozen base is never differentiated and comes out
bit-identical. Data: GSM8K (or instruction data) through a prompt template,
prompt tokens masked from the loss, EOS appended, packed or padded
(`jaxslm.data.sft`). A batch is a pure function of (seed, step), so a resumed
run continues exactly.

Checkpoints (`workdir/checkpoints`) hold the trainable tree, optimizer state
and meta (the base checkpoint, method and config): `jaxslm.load(workdir)`
rebuilds base + adapters and samples from them without merging. At the end the
run also writes `workdir/adapters` (the adapters alone) and `workdir/export`
(the merged model, a plain checkpoint for conversion or deployment).

Several processes (`jaxslm.train.distributed`): each feeds its share of the
batch rows; process 0 alone logs and writes reports; all save checkpoints
together (Orbax); process 0 alone writes adapters/ and export/ (see `write_outputs`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxslm import checkpoint as ckpt
from jaxslm import lora, paths
from jaxslm.config import ConfigDict
from jaxslm.errors import TrainingDiverged, UserError
from jaxslm.evaluation.gsm8k import peak_memory
from jaxslm.loading import build_params, load_base, stack_dir
from jaxslm.models import Decoder, ModelConfig
from jaxslm.sampling import batching
from jaxslm.train import memory, parallel
from jaxslm.train.finetune_data import _gsm8k_subset, build_data, evaluate_exact_match
from jaxslm.train.optim import make_optimizer
from jaxslm.train.outputs import final_outputs
from jaxslm.train.session import Session, fmt_metrics, log

METHODS = ("lora", "qlora", "full", "stacked")


def validate_config(config: ConfigDict) -> None:
  t = config.train
  if config.method not in METHODS:
    raise UserError(f"method={config.method!r}; valid methods: {', '.join(METHODS)}.")
  if not config.init_from:
    raise UserError("init_from is empty: pass --config.init_from=CHECKPOINT (a pretraining "
                    "workdir, a step directory or an exported model).")
  for name in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "checkpoint_every",
               "keep_checkpoints", "grad_accum"):
    if t.get(name, 1) <= 0:
      raise UserError(f"train.{name}={t[name]} must be a positive integer.")
  if config.method != "full" and config.lora.rank < 1:
    raise UserError(f"lora.rank={config.lora.rank} must be >= 1.")
  devices = jax.device_count()
  if t.batch_size % devices:
    raise UserError(f"train.batch_size={t.batch_size} must be divisible by the {devices} devices "
                    f"(data parallel); use a multiple of {devices}.")
  if t.batch_size % jax.process_count():
    raise UserError(f"train.batch_size={t.batch_size} must be divisible by the "
                    f"{jax.process_count()} processes (each feeds its share of the rows).")
  a = grad_accum(t)
  if t.batch_size % (a * devices) or t.batch_size % (a * jax.process_count()):
    raise UserError(f"train.grad_accum={a}: train.batch_size={t.batch_size} must split into "
                    f"{a} micro-batches whose rows divide over the {devices} devices and "
                    f"{jax.process_count()} processes; use a batch size that is a multiple of "
                    f"{a * max(devices, jax.process_count())} or another grad_accum.")
  parallel.mesh_shape(config.mesh.data, config.mesh.get("fsdp", 1), devices)
  make_optimizer(t)


# ------------------------------------------------------------------ the step
def grad_accum(t: ConfigDict) -> int:
  """train.grad_accum: micro-batches per update (1 where a config predates it)."""
  return int(t.get("grad_accum", 1))


def loss_fn(trainable, frozen, tokens_bt1, weights_bt, rng, *, model_cfg: ModelConfig):
  """(token-mean loss of the batch, its summed token weight)."""
  from jaxslm.data.sft import masked_token_loss
  params = lora.combine(trainable, frozen)
  rngs = {"lora_dropout": rng} if rng is not None else {}
  logits_btv = Decoder(model_cfg).apply({"params": params}, tokens_bt1[:, :-1], rngs=rngs)
  return masked_token_loss(logits_btv, tokens_bt1[:, 1:], weights_bt)


def _grads(trainable, frozen, tokens, weights, rng, *, model_cfg, dropout: bool):
  """(loss, gradients) of one batch `[B, T+1]`, or of the union of `A`
  micro-batches `[A, B/A, T+1]` run one after another: each micro-batch gives
  its summed token loss and weight, and the sums are divided by the total
  weight, so the update is the token mean of the whole batch, as in one pass."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if tokens.ndim == 2:
    (loss, _), grads = grad_fn(trainable, frozen, tokens, weights, rng if dropout else None,
                               model_cfg=model_cfg)
    return loss, grads

  def micro(carry, xs):
    loss_sum, weight_sum, grad_sum = carry
    i, tokens_bt1, weights_bt = xs
    r = jax.random.fold_in(rng, i) if dropout else None
    # d(sum) = d(mean) * weight: the gradient of this micro-batch's summed loss.
    (mean, weight), grads = grad_fn(trainable, frozen, tokens_bt1, weights_bt, r,
                                    model_cfg=model_cfg)
    return (loss_sum + mean * weight, weight_sum + weight,
            jax.tree.map(lambda s, g: s + g * weight, grad_sum, grads)), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
  steps = jnp.arange(tokens.shape[0])
  (loss_sum, weight_sum, grad_sum), _ = jax.lax.scan(
      micro, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), zeros),
      (steps, tokens, weights))
  total = jnp.where(weight_sum > 0, weight_sum, 1.0)
  grads = jax.tree.map(lambda g, p: (g / total).astype(p.dtype), grad_sum, trainable)
  return loss_sum / total, grads


def train_step(trainable, opt_state, frozen, tokens, weights, rng, *, model_cfg, optimizer,
               dropout: bool):
  """One AdamW update of the trainable tree only; the frozen tree gets no gradient.
  `tokens` is one batch `[B, T+1]` or `train.grad_accum` micro-batches `[A, B/A, T+1]`
  (`weights` alike, one column fewer)."""
  import optax
  loss, grads = _grads(trainable, frozen, tokens, weights, rng, model_cfg=model_cfg,
                       dropout=dropout)
  updates, opt_state = optimizer.update(grads, opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  return trainable, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def memory_advice(t: ConfigDict, need: int, free: int) -> str:
  """What to change when a fine-tuning step needs `need` bytes with `free` free: the
  smallest train.grad_accum whose micro-batches (about 1/A of the step's memory)
  fit and still divide over the devices, or what else to lower."""
  a, devices = grad_accum(t), jax.device_count()
  want = a * need / max(free, 1)
  fits = [j for j in range(a + 1, t.batch_size + 1)
          if t.batch_size % (j * devices) == 0 and j >= want]
  if fits:
    return f"set train.grad_accum={fits[0]} (the same update in micro-batches)"
  return (f"lower train.seq_len ({t.seq_len}) or train.batch_size ({t.batch_size}), or set "
          "model remat (train.grad_accum cannot split this batch finely enough)")


def _batch_shape(tokens) -> str:
  """A fine-tuning batch's shape, for the memory account's line."""
  if tokens.ndim == 2:
    return f"{tokens.shape[0]} rows x {tokens.shape[1] - 1} tokens"
  a, b, t = tokens.shape
  return f"{a} micro-batches of {b} rows x {t - 1} tokens"


def eval_loss(trainable, frozen, tokens_bt1, weights_bt, *, model_cfg):
  """(sum of token NLL, number of weighted tokens) of one validation batch."""
  from jaxslm.data.sft import masked_token_loss
  params = lora.combine(trainable, frozen)
  logits_btv = Decoder(model_cfg).apply({"params": params}, tokens_bt1[:, :-1])
  loss, wsum = masked_token_loss(logits_btv, tokens_bt1[:, 1:], weights_bt)
  return loss * wsum, wsum


# ------------------------------------------------------------------ the run
def run(config: ConfigDict, workdir: str, *, resume: bool = False) -> dict[str, Any]:
  """Fine-tune per `config`; checkpoints, metrics, adapters and the merged export in `workdir`."""
  t = config.train
  validate_config(config)
  with Session(workdir, what="fine-tuning", keep=t.keep_checkpoints, resume=resume) as run:
    run.refuse_unless_resuming()
    config = resolve_inputs(config, run)
    ft = setup(config, run)
    run.open_log(ft.start, t.steps, config)
    step, last, interrupted = ft.start, ft.last, False
    if step == 0:
      last = {"step": 0, **validate(ft)}
      run.record(last)
      log(f"step 0: {fmt_metrics(last)}")
    while step < t.steps:
      m = train_one(ft, step)
      step += 1
      if step % t.log_every == 0 or step == t.steps or step == ft.start + 1:
        last = check_and_log(ft, run, step, m)
      if step % t.eval_every == 0 or step == t.steps:
        v = validate(ft)
        last.update(v)
        run.record({"step": step, **v})
        run.note(step, v)
      if step % t.checkpoint_every == 0 or step == t.steps:
        run.save(step, ft.trainable, ft.opt_state, {**ft.meta_base, "step": step, "metrics": last})
      if run.stop_requested():
        run.interrupted(step, ft.trainable, ft.opt_state,
                        {**ft.meta_base, "step": step, "metrics": last})
        interrupted = True
        break
  run.finish()
  result = finish(ft, run, config, step, last, interrupted)
  run.close()
  return result


# ------------------------------------------------------------------ the run's parts
@dataclasses.dataclass
class FineTune:
  """One fine-tuning run's model, data, jitted functions and mutable state."""
  config: ConfigDict
  model_cfg: ModelConfig
  tok: Any
  kind: str
  counts: dict
  trainable: Any
  frozen: Any
  opt_state: Any
  mesh: Any
  batch_sh: Any
  step_fn: Any
  eval_fn: Any
  schedule: Any
  sampler: Any
  val: tuple
  problems: list
  data_info: dict
  meta_base: dict
  start: int = 0
  last: dict = dataclasses.field(default_factory=dict)
  train_s: float = 0.0


def resolve_inputs(config: ConfigDict, run: Session) -> ConfigDict:
  """This run's copy of the config: on resume the base it started from, and for
  stacked LoRA a private copy of the stage-1 adapters (stage 1 may be retrained)."""
  config = ConfigDict(config.to_dict())
  saved = run.saved_meta["finetune"] if run.saved_meta is not None else None
  if saved is not None:
    if saved["method"] != config.method:
      raise UserError(f"{run.workdir!r} was trained with method {saved['method']!r}, not "
                      f"{config.method!r}; resume with the same method.")
    try:
      now = paths.resolve(ckpt.resolve_step_dir(config.init_from))
    except FileNotFoundError:
      now = None
    if now != saved["init_from"]:
      log(f"Resuming on the base the run started from, {saved['init_from']} "
          f"(init_from={config.init_from!r} now resolves elsewhere).")
    config.init_from = saved["init_from"]
  if config.method == "stacked":
    config.stack_from = pin_stage1(config, run.workdir)
  return config


def pin_stage1(config: ConfigDict, workdir: str) -> str:
  if paths.is_remote(workdir):
    raise UserError(f"method='stacked' pins a copy of the stage-1 adapters in the workdir, "
                    f"which needs a local --workdir, not {workdir!r}: train locally (or on a "
                    f"mounted bucket) and copy the run to the bucket after.")
  pinned = os.path.join(os.path.abspath(workdir), "stage1_adapters")
  if not os.path.isdir(pinned):
    if not config.stack_from:
      raise UserError("method='stacked' needs --config.stack_from=DIR: the adapters of the "
                      "first stage (a fine-tuning workdir or its adapters/ directory).")
    import shutil
    shutil.copytree(stack_dir(config.stack_from), pinned + ".tmp", dirs_exist_ok=True)
    os.replace(pinned + ".tmp", pinned)
  return pinned


def setup(config: ConfigDict, run: Session) -> FineTune:
  """Base + method, data, optimizer, mesh and shardings, jitted step; restored on resume."""
  from jaxslm.data import sft
  t = config.train
  model_cfg, base_params, tok, base = load_base(config)
  if t.seq_len > model_cfg.max_seq_len:
    raise UserError(f"train.seq_len={t.seq_len} exceeds the base model's context "
                    f"{model_cfg.max_seq_len}; lower train.seq_len.")
  params, kind = build_params(config, base_params, seed=t.seed)
  trainable, frozen = lora.split(params, kind)
  counts = lora.count_params(params, kind)
  log(f"Base: {base.path} ({model_cfg.dtype} compute). Method {config.method}: "
      f"{counts['trainable']:,} trainable of {counts['total']:,} parameters "
      f"({counts['percent']:.3f}%)")
  tr_tokens, tr_weights, va_tokens, va_weights, data_info = build_data(config, tok, t.seq_len)
  log(f"Data: {data_info}")
  optimizer, schedule = make_optimizer(t)
  opt_state = optimizer.init(trainable)
  # The batch is split over every device ("data" x "fsdp"); with mesh.fsdp > 1 the
  # frozen base, the trainable tree (adapters or all), its gradients and AdamW
  # state are split over "fsdp" by the rules of `parallel` (replicated otherwise).
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.get("fsdp", 1))
  rep = parallel.replicated(mesh)
  # [B, T] rows split over the batch axes; with micro-batches [A, B/A, T], along B/A.
  batch_sh = (parallel.batch_sharding(mesh) if grad_accum(t) == 1 else
              parallel.batch_sharding(mesh, batch_dim=1, ndim=3))
  tr_sh, fr_sh, opt_sh = (parallel.tree_shardings(x, mesh) for x in (trainable, frozen, opt_state))
  log(memory.estimate(model_cfg, params=trainable, frozen=frozen, opt_state=opt_state,
                      param_shardings=tr_sh, frozen_shardings=fr_sh, opt_shardings=opt_sh,
                      batch_per_device=t.batch_size // grad_accum(t) // jax.device_count(),
                      seq_len=t.seq_len, grad_copies=2 if grad_accum(t) > 1 else 1,
                      where=f"mesh {dict(mesh.shape)}").line())
  start, last = 0, {}
  if run.latest is not None:
    trainable, opt_state, meta = run.restore(ckpt.abstract_like(trainable, tr_sh),
                                             ckpt.abstract_like(opt_state, opt_sh))
    start, last = int(meta["step"]), dict(meta.get("metrics") or {})
    log(f"Resumed from step {start} ({run.checkpointer.directory})")
  trainable, frozen, opt_state = parallel.put_sharded((trainable, frozen, opt_state),
                                                      (tr_sh, fr_sh, opt_sh))
  dropout = config.method != "full" and config.lora.dropout > 0
  # Compiled ahead for the batch's shape: XLA's memory account is logged before the
  # first step runs, and running out of memory names the train.grad_accum that fits.
  step_fn = memory.Accounted(
      jax.jit(functools.partial(train_step, model_cfg=model_cfg, optimizer=optimizer,
                                dropout=dropout), donate_argnums=(0, 1),
              out_shardings=(tr_sh, opt_sh, rep)), {},
      what="Fine-tuning step", log=log, advice=functools.partial(memory_advice, t),
      describe=lambda *a: _batch_shape(a[3]), free=batching.free_memory_bytes)
  sampler = sft.SFTBatches(tr_tokens, tr_weights, global_batch_size=t.batch_size, seed=t.seed,
                           process_index=jax.process_index(),
                           process_count=jax.process_count())
  meta_base = {"finetune": {"method": config.method, "trainable": kind,
                            "init_from": paths.resolve(base.path),
                            "template": config.data.template},
               "config": json.loads(config.to_json_best_effort()), "model": model_cfg.to_dict(),
               "tokenizer": tok.spec(), "data": data_info, "params": counts,
               "jax_version": jax.__version__}
  return FineTune(config, model_cfg, tok, kind, counts, trainable, frozen, opt_state, mesh,
                  batch_sh, step_fn, jax.jit(functools.partial(eval_loss, model_cfg=model_cfg)),
                  schedule, sampler, (va_tokens, va_weights), _gsm8k_subset(config), data_info,
                  meta_base, start, last)


def train_one(ft: FineTune, step: int) -> dict:
  """One update on step `step`'s batch (a pure function of seed and step)."""
  t = ft.config.train
  tokens, weights = ft.sampler.batch(step)
  a = grad_accum(t)
  if a > 1:   # this process's rows, cut into A micro-batches in order
    tokens, weights = (x.reshape(a, -1, x.shape[-1]) for x in (tokens, weights))
  lead = (t.batch_size,) if a == 1 else (a, t.batch_size // a)
  tokens = parallel.global_array(tokens, ft.batch_sh, (*lead, tokens.shape[-1]))
  weights = parallel.global_array(weights, ft.batch_sh, (*lead, weights.shape[-1]))
  t0 = time.perf_counter()
  rng = jax.random.fold_in(jax.random.PRNGKey(t.seed), step)
  ft.trainable, ft.opt_state, m = ft.step_fn(ft.trainable, ft.opt_state, ft.frozen, tokens,
                                             weights, rng)
  ft.train_s += time.perf_counter() - t0
  return m


def check_and_log(ft: FineTune, run: Session, step: int, m) -> dict:
  """The step's metrics on the host (a sync point), checked finite, logged."""
  t0 = time.perf_counter()
  m = {k: float(v) for k, v in jax.device_get(m).items()}
  ft.train_s += time.perf_counter() - t0
  if not all(math.isfinite(v) for v in m.values()):
    raise TrainingDiverged(f"Fine-tuning diverged at step {step}: {m}. The last good "
                           f"checkpoint is step {run.checkpointer.latest_step()}; lower "
                           "train.lr and --resume.")
  last = {"step": step, **m, "lr": float(ft.schedule(step - 1))}
  run.record(last)
  run.progress.update(step, loss=round(m["loss"], 4), lr=f"{last['lr']:.2e}")
  return last


def validate(ft: FineTune) -> dict:
  """Validation loss and GSM8K exact match. Every process evaluates on its own
  copy of the params (FSDP shards gathered first): the same numbers everywhere."""
  t = ft.config.train
  out = {}
  local_tr, local_fr = parallel.local_replica(parallel.gathered((ft.trainable, ft.frozen),
                                                                ft.mesh))
  va_tokens, va_weights = ft.val
  if va_tokens is not None:
    total = count = 0.0
    for b in range(0, va_tokens.shape[0], t.batch_size):
      s, c = ft.eval_fn(local_tr, local_fr, jnp.asarray(va_tokens[b:b + t.batch_size]),
                        jnp.asarray(va_weights[b:b + t.batch_size]))
      total, count = total + float(s), count + float(c)
    out.update(val_loss=total / count, val_ppl=math.exp(min(total / count, 50)))
  if ft.problems:
    out.update(evaluate_exact_match(ft.config, ft.model_cfg, lora.combine(local_tr, local_fr),
                                    ft.tok, ft.problems))
  return out


def finish(ft: FineTune, run: Session, config: ConfigDict, step: int, last: dict,
           interrupted: bool) -> dict:
  """The result; after the last step also adapters/, export/, summary.json; loss.png."""
  params = lora.combine(ft.trainable, ft.frozen)
  result = {"workdir": run.workdir, "step": step, "last": last, "interrupted": interrupted,
            "params": params, "model_cfg": ft.model_cfg, "tokenizer": ft.tok,
            "counts": ft.counts, "data": ft.data_info, "train_s": ft.train_s}
  if not interrupted and step >= config.train.steps:
    summary = {"method": config.method, "step": step, "train_s": ft.train_s,
               "params": ft.counts, "data": ft.data_info, "last": last, **peak_memory()}
    if config.method == "qlora":
      from jaxslm import quant
      summary["quantized"] = quant.quantized_bytes_report(lora.strip(params))
    result.update(final_outputs(run.workdir, config, params, ft.mesh, ft.kind, ft.meta_base,
                                last, summary))
  result["plot"] = run.plot("loss.png")
  return result
