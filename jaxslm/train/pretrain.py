"""Pretraining: `run(config, workdir)` trains a decoder from scratch.

The loop is thin: check the config, build tokenizer, data, model and state;
then for each step feed the batch of that step (a pure function of seed and
step) to the jitted `train_step`, log, validate and checkpoint. Resuming
restores params, optimizer state, step and RNG, and continues with exactly
the batches an uninterrupted run would have seen.
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
from jax.experimental import multihost_utils

from jaxslm import checkpoint as ckpt
from jaxslm import integrity
from jaxslm import paths
from jaxslm import tokenizers
from jaxslm.config import ConfigDict, build_model_config
from jaxslm.data import BatchSampler, build_token_dataset, eval_batches, iter_texts
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig, count_params, flops_per_token, init_params, summary
from jaxslm.sampling import sample_reference
from jaxslm.train import memory, parallel, reporting
from jaxslm.train.signals import StopRequest
from jaxslm.train.optim import make_optimizer
from jaxslm.train.step import (TrainState, create_state, eval_step, jit_train_step,
                               state_shardings)

# Config fields whose change makes a resumed run differ from an uninterrupted one.
_EXACTNESS_FIELDS = ("train.seed", "train.batch_size", "train.grad_accum", "train.seq_len",
                     "train.lr", "train.min_lr", "train.warmup_steps", "train.decay_steps",
                     "train.b1", "train.b2", "train.eps", "train.weight_decay", "train.grad_clip",
                     "data", "tokenizer")


class TrainingDiverged(RuntimeError):
  """The loss or the parameters became NaN or infinite."""


def is_main_process() -> bool:
  return jax.process_index() == 0


def log(*args):
  if is_main_process():
    print(*args, flush=True)


def validate_config(config: ConfigDict, *, device_count: int | None = None,
                    process_count: int | None = None) -> ModelConfig:
  """Every check that needs no data, so bad input fails in a second, not after
  tokenizing a corpus. Returns the model config."""
  t = config.train
  device_count = jax.device_count() if device_count is None else device_count
  process_count = jax.process_count() if process_count is None else process_count
  model_cfg = build_model_config(config)
  for name in ("steps", "batch_size", "grad_accum", "seq_len", "log_every", "eval_every",
               "checkpoint_every", "eval_batches", "keep_checkpoints"):
    if t[name] <= 0:
      raise UserError(f"train.{name}={t[name]} must be a positive integer.")
  if t.eps <= 0:
    raise UserError(f"train.eps={t.eps} must be positive (Adam divides by sqrt(v) + eps).")
  if t.seq_len > model_cfg.max_seq_len:
    raise UserError(f"train.seq_len={t.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len};"
                    f" lower train.seq_len or raise model.max_seq_len.")
  per = t.grad_accum * process_count
  if t.batch_size % per:
    raise UserError(f"train.batch_size={t.batch_size} must be divisible by train.grad_accum x "
                    f"processes = {t.grad_accum} x {process_count}.")
  micro = t.batch_size // t.grad_accum
  if micro % device_count:
    raise UserError(f"The micro-batch train.batch_size / train.grad_accum = {micro} must be "
                    f"divisible by the {device_count} devices; choose train.batch_size as a "
                    f"multiple of {t.grad_accum * device_count}.")
  fmt = config.data.get("synthetic_format", "gsm8k")
  if fmt not in ("gsm8k", "react"):
    raise UserError(f"data.synthetic_format={fmt!r} is invalid: expected 'gsm8k' or 'react'.")
  make_optimizer(t)  # schedule checks
  parallel.mesh_shape(config.mesh.data, config.mesh.fsdp, device_count)
  return model_cfg


def build_tokenizer(config: ConfigDict) -> tokenizers.Tokenizer:
  """The tokenizer the config names; "train" fits SentencePiece on the corpus."""
  tc = config.tokenizer
  if tc.name != "train":
    tok = tokenizers.get_tokenizer(tc.name)
    # Pretraining never puts BOS before a document, so the prompts of the model
    # it trains must not start with one either (a Llama 3 tokenizer.json says so).
    if tok.add_bos_default:
      tok._set_add_bos_default(False)
    return tok
  docs = []
  for doc in iter_texts(config.data):
    docs.append(doc)
    if len(docs) >= tc.train_documents:
      break
  log(f"Training a SentencePiece {tc.model_type} tokenizer (vocab {tc.vocab_size}) "
      f"on {len(docs)} documents")
  return tokenizers.train_sentencepiece(docs, vocab_size=tc.vocab_size, model_type=tc.model_type,
                                        seed=config.train.seed)


def same_tokenizer_everywhere(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  """Process 0's tokenizer on every process (each trained its own from the same
  documents and seed, which should agree; this makes sure of it)."""
  if jax.process_count() == 1:
    return tok
  data = np.frombuffer(json.dumps(tok.spec()).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buf = data if is_main_process() else np.zeros(size, np.uint8)
  spec = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode())
  return tokenizers.from_spec(spec)


def compile_step(step_fn, abstract: TrainState, state_sh: TrainState, batch_spec):
  """`step_fn` compiled ahead of time for the state and batch shapes (the only
  ones a run uses); logs XLA's memory account where the backend gives one."""
  spec = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, state_sh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(spec, batch_spec).compile()
  line = memory.compiled_line(compiled)
  log(f"Compiled the train step in {time.perf_counter() - t0:.1f}s" + (f". {line}" if line else ""))
  return compiled


def saved_config(workdir: str) -> ConfigDict | None:
  """The config of the latest checkpoint in `workdir` whose meta reads, or None
  (`run` reports a damaged newer step and, resuming, sets it aside)."""
  directory = ckpt.checkpoint_dir(workdir)
  for step in reversed(ckpt.step_numbers(directory)):
    try:
      return ConfigDict(ckpt.read_step_meta(paths.join(directory, str(step)))["config"])
    except ckpt.DamagedCheckpoint:
      continue
  return None


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
  return out


def config_changes(saved: dict, current: dict) -> list[str]:
  a, b = _flatten(saved), _flatten(json.loads(json.dumps(current)))
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


def run(config: ConfigDict, workdir: str, *, resume: bool = False) -> dict[str, Any]:
  """Train per `config`, writing checkpoints, metrics and plots to `workdir`.

  Returns a summary dict (steps, last metrics, final params, tokenizer).
  """
  t = config.train
  model_cfg = validate_config(config)
  optimizer, schedule = make_optimizer(t)
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  paths.makedirs(workdir)
  checkpointer = integrity.open_checkpointer(ckpt.checkpoint_dir(workdir), set_aside=resume,
                                            log=log, keep=t.keep_checkpoints,
                                            async_save=t.async_checkpoint)
  latest, saved_meta = integrity.newest_meta(checkpointer, set_aside=resume, log=log)
  config_json = json.loads(config.to_json_best_effort())
  if saved_meta is not None:
    diff = [c for c in config_changes(saved_meta["model"], model_cfg.to_dict())
            if c.split(":")[0] not in ("remat", "attention_impl", "dtype")]
    if not resume or diff:
      what = ("holds a checkpoint of a different model (" + "; ".join(diff) + ")") if diff else \
             f"already holds a checkpoint (step {latest})"
      raise UserError(f"Workdir {workdir!r} {what}. Pass --resume to continue it"
                      f"{' with the same model config' if diff else ''}, or choose another "
                      f"--workdir.")
  log("Config:\n" + config.to_json_best_effort(indent=2))
  log(f"Devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
      f"({jax.process_count()} process(es)); backend {jax.default_backend()}; "
      f"mesh {dict(mesh.shape)}")
  if saved_meta is not None:
    changed = [c for c in config_changes(saved_meta["config"], config_json)
               if c.startswith(_EXACTNESS_FIELDS)]
    saved_t = saved_meta["config"]["train"]
    if not t.decay_steps and not saved_t["decay_steps"] and saved_t["steps"] != t.steps:
      changed.append(f"train.steps: {saved_t['steps']} -> {t.steps} (the cosine decay length, "
                     f"as train.decay_steps is 0)")
    if changed:
      log("Warning: resuming with a changed config; the run will not match an uninterrupted "
          "one: " + "; ".join(changed))

  # Tokenizer: a resumed run reuses the exact one it was trained with.
  tok = tokenizers.from_spec(saved_meta["tokenizer"]) if saved_meta else build_tokenizer(config)
  if config.tokenizer.name == "train" and not saved_meta:
    tok = same_tokenizer_everywhere(tok)
  if tok.vocab_size > model_cfg.vocab_size:
    raise UserError(f"The tokenizer {tok.name} has {tok.vocab_size} ids but model.vocab_size is "
                    f"{model_cfg.vocab_size}; set --config.model.vocab_size={tok.vocab_size}.")
  log(summary(model_cfg))
  log(f"Tokenizer: {tok.name}, {tok.vocab_size} ids")

  micro = t.batch_size // t.grad_accum
  data = build_token_dataset(config.data, tok, seq_len=t.seq_len, log=log)
  sampler = BatchSampler(data.train, seq_len=t.seq_len, global_batch_size=t.batch_size,
                         seed=t.seed, process_index=jax.process_index(),
                         process_count=jax.process_count())
  # Validation batches have the size of a training micro-batch (memory).
  val_local = eval_batches(data.val, seq_len=t.seq_len, batch_size=micro,
                           num_batches=t.eval_batches, process_index=jax.process_index(),
                           process_count=jax.process_count())

  def fresh_state():
    return create_state(init_params(model_cfg, jax.random.PRNGKey(t.seed)), optimizer, t.seed)

  abstract = jax.eval_shape(fresh_state)
  state_sh = state_shardings(abstract, mesh)
  step_fn, batch_sh = jit_train_step(model_cfg, optimizer, schedule, state_sh, mesh)
  log(memory.estimate(model_cfg, params=abstract.params, opt_state=abstract.opt_state,
                      param_shardings=state_sh.params, opt_shardings=state_sh.opt_state,
                      batch_per_device=micro // jax.device_count(), seq_len=t.seq_len,
                      grad_copies=2 if t.grad_accum > 1 else 1,
                      where=f"mesh {dict(mesh.shape)}").line())
  # Compile the step before anything else runs: a run that cannot fit fails here, at step 0.
  step_fn = compile_step(step_fn, abstract, state_sh,
                         jax.ShapeDtypeStruct((t.grad_accum, micro, t.seq_len + 1), jnp.int32,
                                              sharding=batch_sh))
  eval_sh = parallel.batch_sharding(mesh)
  eval_fn = jax.jit(functools.partial(eval_step, model_cfg=model_cfg),
                    in_shardings=(state_sh.params, eval_sh),
                    out_shardings=parallel.replicated(mesh))

  if saved_meta is not None:
    _, params, opt_state, meta = integrity.restore_newest_intact(
        checkpointer, ckpt.abstract_like(abstract.params, state_sh.params),
        ckpt.abstract_like(abstract.opt_state, state_sh.opt_state), log=log)
    state = TrainState(step=jax.device_put(jnp.int32(meta["step"]), state_sh.step),
                       params=params, opt_state=opt_state,
                       rng=jax.device_put(jnp.asarray(meta["rng"], jnp.uint32), state_sh.rng))
    log(f"Resumed from step {meta['step']} ({checkpointer.directory})")
  else:
    state = jax.jit(fresh_state, out_shardings=state_sh)()
  start = int(jax.device_get(state.step))
  counts = count_params(model_cfg)
  log(f"Parameters: {counts['total']:,} total, {counts['non_embedding']:,} non-embedding")

  def device_batch(step: int) -> jax.Array:
    local = sampler.batch(step).reshape(t.grad_accum, -1, t.seq_len + 1)  # this process's rows
    return parallel.global_array(local, batch_sh, (t.grad_accum, micro, t.seq_len + 1))

  def evaluate() -> float:
    losses = [eval_fn(state.params, parallel.global_array(
        b, eval_sh, (b.shape[0] * jax.process_count(), b.shape[1]))) for b in val_local]
    return float(np.mean(jax.device_get(losses)))

  metrics_log = reporting.MetricsLog(paths.join(workdir, "metrics.jsonl"), is_main_process())
  # A resumed run rewrites what came after its checkpoint; a fresh one starts a new log.
  metrics_log.truncate_after(start if start else -1)
  peak, peak_src = reporting.peak_flops_per_device(t.peak_flops)
  flops_tok = flops_per_token(model_cfg, t.seq_len)
  log(f"MFU denominator: {peak / 1e12:.3g} TFLOP/s per device ({peak_src}); "
      f"{flops_tok / 1e6:.4g} MFLOP per token (6N + 12·L·H·T)")
  progress = reporting.Progress(t.steps, is_main_process())
  tokens_per_step = t.batch_size * t.seq_len
  pending: list[tuple[int, dict]] = []
  last: dict = {}
  window = {"t0": time.perf_counter(), "steps": 0}  # training steps since the last log
  saved_step = start

  def flush() -> None:
    """Bring pending step metrics to the host; stop on a non-finite loss or
    parameter norm (so a NaN state is never saved); log them. Throughput
    covers the training steps since the previous log, not eval or saving."""
    nonlocal last
    if not pending:
      return
    host = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, host):
      m = {k: float(v) for k, v in m.items()}
      if not all(math.isfinite(v) for v in m.values()):
        raise TrainingDiverged(
            f"Training diverged at step {s + 1}: loss {m['loss']}, grad norm {m['grad_norm']}, "
            f"param norm {m['param_norm']}. Stopped without saving it; the last good checkpoint "
            f"in {checkpointer.directory} is step {checkpointer.latest_step()}. Lower train.lr "
            f"or raise train.warmup_steps, then --resume.")
      last = {"step": s + 1, **m}
    pending.clear()
    tps = tokens_per_step * window["steps"] / max(time.perf_counter() - window["t0"], 1e-9)
    mfu = tps * flops_tok / (peak * jax.device_count()) if peak else float("nan")
    last.update(tokens_per_s=tps, mfu=mfu)
    metrics_log.write(last)
    progress.update(last["step"], loss=last["loss"], lr=last["lr"], tok_s=round(tps),
                    mfu=f"{100 * mfu:.1f}%")
    window.update(t0=time.perf_counter(), steps=0)

  def save(step: int) -> None:
    nonlocal saved_step
    if step != saved_step:
      flush()
      checkpointer.save(step, state.params, state.opt_state, {
          "step": step, "rng": [int(x) for x in np.asarray(jax.device_get(state.rng)).ravel()],
          "data": {"next_batch": step, "seed": t.seed, "token_cache": data.path},
          "config": config_json, "model": model_cfg.to_dict(), "tokenizer": tok.spec(),
          "metrics": last, "jax_version": jax.__version__})
      saved_step = step

  # Ctrl-C or SIGTERM (preemption): finish the step, save, exit.
  stop = StopRequest().install()

  def should_stop(step: int) -> bool:
    if jax.process_count() == 1:
      return stop.requested
    # Processes agree at the same steps, so all leave the loop together.
    if step % t.log_every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.int32(stop.requested))))

  step = start
  result: dict[str, Any] = {"workdir": workdir, "start_step": start, "interrupted": False}
  try:
    if start == 0:
      val = evaluate()
      metrics_log.write({"step": 0, "val_loss": val, "val_ppl": math.exp(min(val, 50))})
      log(f"step 0: validation loss {val:.4f} (ppl {math.exp(min(val, 50)):.1f})")
    window.update(t0=time.perf_counter(), steps=0)
    while step < t.steps:
      state, metrics = step_fn(state, device_batch(step))
      pending.append((step, metrics))
      step += 1
      window["steps"] += 1
      if step == start + 1 or step % t.log_every == 0 or step == t.steps:
        flush()  # the first step's rate includes compilation
      paused = False  # evaluation and saving are not training time
      if step % t.eval_every == 0 or step == t.steps:
        flush()
        paused = True
        val = evaluate()
        metrics_log.write({"step": step, "val_loss": val, "val_ppl": math.exp(min(val, 50))})
        progress.newline()
        log(f"step {step}: validation loss {val:.4f} (ppl {math.exp(min(val, 50)):.2f})")
        last["val_loss"] = val
      if step % t.checkpoint_every == 0 or step == t.steps:
        save(step)
        paused = True
      if should_stop(step):
        save(step)
        checkpointer.wait()
        progress.newline()
        log(f"Interrupted: saved step {step} to {checkpointer.directory}; continue with --resume.")
        result["interrupted"] = True
        break
      if paused:
        window.update(t0=time.perf_counter(), steps=0)
  finally:
    checkpointer.wait()
    stop.restore()
  progress.newline()
  result.update(step=step, last=last, checkpoint_dir=checkpointer.directory,
                params=state.params, tokenizer=tok, model_cfg=model_cfg)
  if step >= t.steps and not result["interrupted"]:
    result["samples"] = print_samples(model_cfg, state.params, tok, t, mesh)
  if is_main_process():
    result["plot"] = reporting.plot_losses(metrics_log.read(), paths.join(workdir, "loss.png"))
    log(f"Wrote {metrics_log.path}" + (f" and {result['plot']}" if result["plot"] else ""))
  checkpointer.close()
  return result


def print_samples(model_cfg, params, tok, t, mesh) -> list[str]:
  """A few greedy continuations of `train.sample_prompts` (process 0 prints)."""
  prompts = [p for p in t.sample_prompts if p]
  if not prompts:
    return []
  # Gather FSDP-sharded params onto every process (a collective: all take part).
  params = jax.device_get(jax.jit(lambda p: p, out_shardings=parallel.replicated(mesh))(params))
  if not is_main_process():
    return []
  max_new = min(t.sample_tokens, model_cfg.max_seq_len - max(len(tok.encode(p)) for p in prompts))
  outs = sample_reference(model_cfg, params, [tok.encode(p) for p in prompts],
                          max_new_tokens=max_new, temperature=0.0, eos_id=tok.eos_id)
  texts = [p + tok.decode(o) for p, o in zip(prompts, outs)]
  for text in texts:
    log("--- sample (greedy) ---\n" + text)
  return texts
