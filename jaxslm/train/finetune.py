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
import numpy as np

from jaxslm import checkpoint as ckpt
from jaxslm import paths
from jaxslm.config import ConfigDict
from jaxslm.errors import UserError
from jaxslm.models import Decoder, ModelConfig
from jaxslm.train import memory, parallel, reporting
from jaxslm.train.signals import StopRequest
from jaxslm.train.optim import make_optimizer
from jaxslm.train.outputs import _fmt, write_outputs, write_summary  # noqa: F401 (re-exported)
from jaxslm.train.pretrain import TrainingDiverged, is_main_process, log

METHODS = ("lora", "qlora", "full", "stacked")


# ------------------------------------------------------------------ the model
def lora_config(config: ConfigDict):
  from jaxslm import lora
  c = config.lora
  return lora.LoraConfig(rank=c.rank, alpha=c.alpha, dropout=c.dropout, targets=c.targets,
                         rslora=c.rslora)


def build_params(config: ConfigDict, base_params, *, seed: int):
  """(params, trainable-kind) for the method: the transformed tree and what trains."""
  from jaxslm import lora, quant
  method = config.method
  if method == "full":
    return base_params, "all"
  params = base_params
  if method == "qlora":
    q = config.qlora
    params = quant.quantize_params(params, q.targets, block_size=q.block_size,
                                   double_quant=q.double_quant)
  if method == "stacked":
    if not config.stack_from:
      raise UserError("method='stacked' needs --config.stack_from=DIR: the adapters of the "
                      "first stage (a fine-tuning workdir or its adapters/ directory).")
    params = lora.load_adapters(stack_dir(config.stack_from), params, strict=True)
  params = lora.add_adapter(params, lora_config(config), jax.random.PRNGKey(seed + 17))
  if method == "stacked":   # "last" must never pick up a stage-1 adapter
    counts = {p: len(x.a) for p, x in lora.flatten_paths(params).items()
              if isinstance(x, lora.LoraWeight)}
    single = sorted(p for p, n in counts.items() if n < 2)
    if single:
      raise UserError(f"stacked: lora.targets={config.lora.targets!r} does not cover kernels "
                      f"adapted in stage 1 ({', '.join(single[:6])}); the new adapter must "
                      "target every kernel the first one did (e.g. the same lora.targets).")
  return params, "last"


def stack_dir(path: str) -> str:
  """The adapters directory of a stage-1 run: its workdir's adapters/ or the directory."""
  if paths.isdir(paths.join(path, "adapters")):
    return paths.join(path, "adapters")
  return path


def validate_config(config: ConfigDict) -> None:
  t = config.train
  if config.method not in METHODS:
    raise UserError(f"method={config.method!r}; valid methods: {', '.join(METHODS)}.")
  if not config.init_from:
    raise UserError("init_from is empty: pass --config.init_from=CHECKPOINT (a pretraining "
                    "workdir, a step directory or an exported model).")
  for name in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "checkpoint_every",
               "keep_checkpoints"):
    if t[name] <= 0:
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
  parallel.mesh_shape(config.mesh.data, config.mesh.get("fsdp", 1), devices)
  make_optimizer(t)


def load_base(config: ConfigDict):
  """(model_cfg, params, tokenizer, base meta) of `init_from`, compute dtype overridden."""
  import jaxslm
  base = jaxslm.load(config.init_from)
  model_cfg = base.model_cfg
  if config.model_dtype:
    model_cfg = dataclasses.replace(model_cfg, dtype=config.model_dtype)
  return model_cfg, base.params, base.tokenizer, base


# ------------------------------------------------------------------ the data
def build_data(config: ConfigDict, tok, seq_len: int):
  """(train_tokens, train_weights, val_tokens, val_weights, info)."""
  from jaxslm.data import gsm8k, sft
  d = config.data
  if d.source == "gsm8k":
    split = gsm8k.load(d.split, d.config, path=d.path or None)
    log(split.describe())
    examples = sft.from_gsm8k(split.examples, d.template, keep_annotations=d.keep_annotations)
    source = split.describe()
  elif d.source == "instructions":
    examples = sft.load_instruction_data(d.path, split=d.split, prompt_field=d.prompt_field,
                                         target_field=d.target_field, input_field=d.input_field)
    source = f"{len(examples)} instruction examples from {d.path}"
  else:
    raise UserError(f"data.source={d.source!r}; valid sources: gsm8k, instructions.")
  rng = np.random.default_rng(config.train.seed)
  order = rng.permutation(len(examples))
  n_val = min(d.val_examples, len(examples) // 5)
  val = [examples[i] for i in order[:n_val]]
  train = [examples[i] for i in order[n_val:]]
  enc_train, dropped = sft.encode(train, tok, max_len=seq_len + 1, mask_prompt=d.mask_prompt)
  enc_val, _ = sft.encode(val, tok, max_len=seq_len + 1, mask_prompt=d.mask_prompt)
  layout = sft.pack if d.packing else sft.pad
  tr_tokens, tr_weights = layout(enc_train, seq_len, tok.pad_id)
  va_tokens, va_weights = layout(enc_val, seq_len, tok.pad_id) if enc_val else (None, None)
  info = {"source": source, "train_examples": len(enc_train), "val_examples": len(enc_val),
          "dropped_too_long": dropped, "train_rows": int(tr_tokens.shape[0]),
          "target_tokens": int(tr_weights.sum()), "packing": bool(d.packing)}
  if not len(enc_train):
    raise UserError(f"no training example fits train.seq_len={seq_len} ({dropped} too long); "
                    "raise train.seq_len.")
  return tr_tokens, tr_weights, va_tokens, va_weights, info


# ------------------------------------------------------------------ the step
def loss_fn(trainable, frozen, tokens_bt1, weights_bt, rng, *, model_cfg: ModelConfig):
  from jaxslm import lora
  from jaxslm.data.sft import masked_token_loss
  params = lora.combine(trainable, frozen)
  rngs = {"lora_dropout": rng} if rng is not None else {}
  logits_btv = Decoder(model_cfg).apply({"params": params}, tokens_bt1[:, :-1], rngs=rngs)
  loss, _ = masked_token_loss(logits_btv, tokens_bt1[:, 1:], weights_bt)
  return loss


def train_step(trainable, opt_state, frozen, tokens_bt1, weights_bt, rng, *, model_cfg,
               optimizer, dropout: bool):
  """One AdamW update of the trainable tree only; the frozen tree gets no gradient."""
  import optax
  loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, tokens_bt1, weights_bt,
                                            rng if dropout else None, model_cfg=model_cfg)
  updates, opt_state = optimizer.update(grads, opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  return trainable, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def eval_loss(trainable, frozen, tokens_bt1, weights_bt, *, model_cfg):
  """(sum of token NLL, number of weighted tokens) of one validation batch."""
  from jaxslm import lora
  from jaxslm.data.sft import masked_token_loss
  params = lora.combine(trainable, frozen)
  logits_btv = Decoder(model_cfg).apply({"params": params}, tokens_bt1[:, :-1])
  loss, wsum = masked_token_loss(logits_btv, tokens_bt1[:, 1:], weights_bt)
  return loss * wsum, wsum


# ------------------------------------------------------------------ the run
def _gsm8k_subset(config: ConfigDict):
  """The fixed GSM8K problems scored at each evaluation (same seed, same problems)."""
  from jaxslm.data import gsm8k
  e = config.eval
  if e.problems <= 0:
    return []
  on_gsm8k = config.data.source == "gsm8k"
  path = e.path or (config.data.path if on_gsm8k else "") or None
  split = gsm8k.load(e.split, config.data.config if on_gsm8k else "main", path=path)
  problems, _ = gsm8k.select(split.examples, e.problems, seed=e.seed)
  return problems


def evaluate_exact_match(config, model_cfg, params, tok, problems) -> dict:
  """GSM8K exact match of the adapted params as they are (no merge)."""
  from jaxslm.evaluation import EvalOptions, evaluate_gsm8k
  template = config.data.template if config.data.source == "gsm8k" else "qa"
  res = evaluate_gsm8k((model_cfg, params, tok), problems, EvalOptions(
      template=template, max_new_tokens=config.eval.max_new_tokens,
      batch_size=config.eval.batch_size, rouge=config.eval.rouge, perplexity=False,
      extractors=("strict-match", "flexible-extract")))
  out = {"gsm8k_em": res.summary["accuracy"]["mean"],
         "gsm8k_em_stderr": res.summary["accuracy"]["stderr"]}
  if config.eval.rouge:
    out["rouge1"] = res.summary["rouge1"]["mean"]
  return out


def run(config: ConfigDict, workdir: str, *, resume: bool = False) -> dict[str, Any]:
  """Fine-tune per `config`; checkpoints, metrics, adapters and the merged export in `workdir`."""
  from jaxslm import lora
  from jaxslm.data import sft
  t = config.train
  validate_config(config)
  paths.makedirs(workdir)
  checkpointer = ckpt.Checkpointer(ckpt.checkpoint_dir(workdir), keep=t.keep_checkpoints,
                                   async_save=False)
  latest = checkpointer.latest_step()
  if latest is not None and not resume:
    raise UserError(f"Workdir {workdir!r} already holds a checkpoint (step {latest}). Pass "
                    "--resume to continue it, or choose another --workdir.")
  saved = checkpointer.read_meta(latest)["finetune"] if latest is not None else None
  config = ConfigDict(config.to_dict())   # this run's copy (pinned paths go into it)
  if saved is not None:
    if saved["method"] != config.method:
      raise UserError(f"{workdir!r} was trained with method {saved['method']!r}, not "
                      f"{config.method!r}; resume with the same method.")
    try:
      now = paths.resolve(ckpt.resolve_step_dir(config.init_from))
    except FileNotFoundError:
      now = None
    if now != saved["init_from"]:
      log(f"Resuming on the base the run started from, {saved['init_from']} "
          f"(init_from={config.init_from!r} now resolves elsewhere).")
    config.init_from = saved["init_from"]
  if config.method == "stacked":   # a private copy: stage 1 may be retrained later
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
    config.stack_from = pinned
  model_cfg, base_params, tok, base = load_base(config)
  if t.seq_len > model_cfg.max_seq_len:
    raise UserError(f"train.seq_len={t.seq_len} exceeds the base model's context "
                    f"{model_cfg.max_seq_len}; lower train.seq_len.")
  params, trainable_kind = build_params(config, base_params, seed=t.seed)
  trainable, frozen = lora.split(params, trainable_kind)
  counts = lora.count_params(params, trainable_kind)
  log(f"Base: {base.path} ({model_cfg.dtype} compute). Method {config.method}: "
      f"{counts['trainable']:,} trainable of {counts['total']:,} parameters "
      f"({counts['percent']:.3f}%)")
  tr_tokens, tr_weights, va_tokens, va_weights, data_info = build_data(config, tok, t.seq_len)
  log(f"Data: {data_info}")
  optimizer, schedule = make_optimizer(t)
  opt_state = optimizer.init(trainable)
  config_json = json.loads(config.to_json_best_effort())
  # The batch is split over every device ("data" x "fsdp"); with mesh.fsdp > 1 the
  # frozen base, the trainable tree (adapters or all), its gradients and AdamW
  # state are split over "fsdp" by the rules of `parallel` (replicated otherwise).
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.get("fsdp", 1))
  rep, batch_sh = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  tr_sh, fr_sh, opt_sh = (parallel.tree_shardings(x, mesh) for x in (trainable, frozen, opt_state))
  log(memory.estimate(model_cfg, params=trainable, frozen=frozen, opt_state=opt_state,
                      param_shardings=tr_sh, frozen_shardings=fr_sh, opt_shardings=opt_sh,
                      batch_per_device=t.batch_size // jax.device_count(), seq_len=t.seq_len,
                      where=f"mesh {dict(mesh.shape)}").line())
  start, last_saved = 0, {}
  if latest is not None:
    restored, opt_state, meta = checkpointer.restore(
        latest, ckpt.abstract_like(trainable, tr_sh), ckpt.abstract_like(opt_state, opt_sh))
    trainable, start = restored, int(meta["step"])
    last_saved = dict(meta.get("metrics") or {})
    log(f"Resumed from step {start} ({checkpointer.directory})")
  dropout = config.method != "full" and config.lora.dropout > 0
  trainable, frozen, opt_state = parallel.put_sharded((trainable, frozen, opt_state),
                                                      (tr_sh, fr_sh, opt_sh))
  step_fn = jax.jit(functools.partial(train_step, model_cfg=model_cfg, optimizer=optimizer,
                                      dropout=dropout), donate_argnums=(0, 1),
                    out_shardings=(tr_sh, opt_sh, rep))
  eval_fn = jax.jit(functools.partial(eval_loss, model_cfg=model_cfg))
  sampler = sft.SFTBatches(tr_tokens, tr_weights, global_batch_size=t.batch_size, seed=t.seed,
                           process_index=jax.process_index(),
                           process_count=jax.process_count())

  def device_batch(step: int):
    tokens, weights = sampler.batch(step)
    return (parallel.global_array(tokens, batch_sh, (t.batch_size, tokens.shape[1])),
            parallel.global_array(weights, batch_sh, (t.batch_size, weights.shape[1])))
  problems = _gsm8k_subset(config)

  def validate() -> dict:
    """Every process evaluates on its own copy of the params (FSDP shards
    gathered first): the same numbers everywhere."""
    out = {}
    local_tr, local_fr = parallel.local_replica(parallel.gathered((trainable, frozen), mesh))
    if va_tokens is not None:
      total = count = 0.0
      for b in range(0, va_tokens.shape[0], t.batch_size):
        s, c = eval_fn(local_tr, local_fr, jnp.asarray(va_tokens[b:b + t.batch_size]),
                       jnp.asarray(va_weights[b:b + t.batch_size]))
        total, count = total + float(s), count + float(c)
      out.update(val_loss=total / count, val_ppl=math.exp(min(total / count, 50)))
    if problems:
      out.update(evaluate_exact_match(config, model_cfg, lora.combine(local_tr, local_fr), tok,
                                      problems))
    return out

  meta_base = {"finetune": {"method": config.method, "trainable": trainable_kind,
                            "init_from": paths.resolve(base.path),
                            "template": config.data.template},
               "config": config_json, "model": model_cfg.to_dict(), "tokenizer": tok.spec(),
               "data": data_info, "params": counts, "jax_version": jax.__version__}

  saved_step = [start]

  def save(step, last):
    if step != saved_step[0]:   # e.g. Ctrl-C right after a periodic save
      checkpointer.save(step, trainable, opt_state, {**meta_base, "step": step, "metrics": last})
      saved_step[0] = step

  metrics_log = reporting.MetricsLog(paths.join(workdir, "metrics.jsonl"), is_main_process())
  metrics_log.truncate_after(start if start else -1)
  progress = reporting.Progress(t.steps, is_main_process())
  stop = StopRequest().install()
  last: dict = last_saved
  step = start
  t_train = 0.0
  interrupted = False
  try:
    if start == 0:
      last = {"step": 0, **validate()}
      metrics_log.write(last)
      log(f"step 0: {_fmt(last)}")
    while step < t.steps:
      tokens, weights = device_batch(step)
      t0 = time.perf_counter()
      rng = jax.random.fold_in(jax.random.PRNGKey(t.seed), step)
      trainable, opt_state, m = step_fn(trainable, opt_state, frozen, tokens, weights, rng)
      step += 1
      if step % t.log_every == 0 or step == t.steps or step == start + 1:
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not all(math.isfinite(v) for v in m.values()):
          raise TrainingDiverged(f"Fine-tuning diverged at step {step}: {m}. The last good "
                                 f"checkpoint is step {checkpointer.latest_step()}; lower "
                                 "train.lr and --resume.")
        t_train += time.perf_counter() - t0
        last = {"step": step, **m, "lr": float(schedule(step - 1))}
        metrics_log.write(last)
        progress.update(step, loss=round(m["loss"], 4), lr=f"{last['lr']:.2e}")
      else:
        t_train += time.perf_counter() - t0
      if step % t.eval_every == 0 or step == t.steps:
        v = validate()
        last.update(v)
        metrics_log.write({"step": step, **v})
        progress.newline()
        log(f"step {step}: {_fmt(v)}")
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
  result = {"workdir": workdir, "step": step, "last": last, "interrupted": interrupted,
            "params": params, "model_cfg": model_cfg, "tokenizer": tok, "counts": counts,
            "data": data_info, "train_s": t_train}
  if not interrupted and step >= t.steps:
    whole = parallel.gathered(params, mesh)   # FSDP: a collective, every process takes part
    result.update(write_outputs(workdir, config, whole, trainable_kind, meta_base, last))
    del whole
    from jaxslm.evaluation.gsm8k import peak_memory
    summary = {"method": config.method, "step": step, "train_s": t_train, "params": counts,
               "data": data_info, "last": last, **peak_memory()}
    if config.method == "qlora":
      from jaxslm import quant
      summary["quantized"] = quant.quantized_bytes_report(lora.strip(params))
    write_summary(workdir, summary)
    result["summary"] = summary
  if is_main_process():
    result["plot"] = reporting.plot_losses(metrics_log.read(), paths.join(workdir, "loss.png"))
  checkpointer.close()
  return result


def load_finetuned(step_dir: str, meta: dict, device=None):
  """A fine-tuning checkpoint as a ready model: the base from `init_from`, the
  method's transform, and the saved trainable leaves (adapters stay unmerged)."""
  from jaxslm import lora
  from jaxslm.loading import Loaded
  config = ConfigDict(meta["config"])
  with config.unlocked():
    config.init_from = meta["finetune"]["init_from"]
  if not paths.exists(config.init_from):
    raise FileNotFoundError(f"{step_dir} was fine-tuned from {config.init_from!r}, which no "
                            "longer exists; load its export/ directory (the merged model) "
                            "instead, or restore the base checkpoint.")
  model_cfg, base_params, tok, _ = load_base(config)
  params, kind = build_params(config, base_params, seed=config.train.seed)
  trainable, frozen = lora.split(params, kind)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        trainable)
  trainable = ckpt.read_step_params(step_dir, target)
  return Loaded(model_cfg, lora.combine(trainable, frozen), tok, meta, step_dir)
