"""Pretraining: `run(config, workdir)` trains a decoder from scratch.

The loop is thin: build tokenizer, data, model and state; then for each step
feed the batch of that step (a pure function of seed and step) to the jitted
`train_step`, log, validate and checkpoint. Resuming restores params,
optimizer state, step and RNG, and continues with exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm import checkpoint as ckpt
from jaxslm import tokenizers
from jaxslm.config import ConfigDict, build_model_config
from jaxslm.data import BatchSampler, build_token_dataset, eval_batches, iter_texts
from jaxslm.models import ModelConfig, count_params, flops_per_token, init_params, summary
from jaxslm.sampling import sample_reference
from jaxslm.train import parallel, reporting
from jaxslm.train.optim import make_optimizer
from jaxslm.train.step import (TrainState, create_state, eval_step, jit_train_step,
                               state_shardings)


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite."""


def is_main_process() -> bool:
  return jax.process_index() == 0


def log(*args):
  if is_main_process():
    print(*args, flush=True)


def build_tokenizer(config: ConfigDict) -> tokenizers.Tokenizer:
  """The tokenizer the config names; "train" fits SentencePiece on the corpus."""
  tc = config.tokenizer
  if tc.name != "train":
    return tokenizers.get_tokenizer(tc.name)
  docs = []
  for doc in iter_texts(config.data):
    docs.append(doc)
    if len(docs) >= tc.train_documents:
      break
  log(f"Training a SentencePiece {tc.model_type} tokenizer (vocab {tc.vocab_size}) "
      f"on {len(docs)} documents")
  return tokenizers.train_sentencepiece(docs, vocab_size=tc.vocab_size, model_type=tc.model_type,
                                        seed=config.train.seed)


def check_config(config: ConfigDict, model_cfg: ModelConfig, tok: tokenizers.Tokenizer) -> None:
  t = config.train
  if tok.vocab_size > model_cfg.vocab_size:
    raise ValueError(f"The tokenizer {tok.name} has {tok.vocab_size} ids but model.vocab_size is "
                     f"{model_cfg.vocab_size}; set --config.model.vocab_size={tok.vocab_size}.")
  if t.seq_len > model_cfg.max_seq_len:
    raise ValueError(f"train.seq_len={t.seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len};"
                     f" lower train.seq_len or raise model.max_seq_len.")
  for name in ("steps", "batch_size", "grad_accum", "seq_len"):
    if t[name] <= 0:
      raise ValueError(f"train.{name}={t[name]} must be positive.")
  per = t.grad_accum * jax.process_count()
  if t.batch_size % per:
    raise ValueError(f"train.batch_size={t.batch_size} must be divisible by grad_accum x processes"
                     f" = {per}.")


def _model_mismatch(saved: dict, current: ModelConfig) -> list[str]:
  cur = current.to_dict()
  return [f"{k}: checkpoint {saved.get(k)!r} vs config {cur[k]!r}" for k in cur
          if k not in ("remat", "attention_impl", "dtype") and saved.get(k) != cur[k]]


def run(config: ConfigDict, workdir: str, *, resume: bool = False) -> dict[str, Any]:
  """Train per `config`, writing checkpoints, metrics and plots to `workdir`.

  Returns a summary dict (final step, losses, paths).
  """
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  checkpointer = ckpt.Checkpointer(ckpt.checkpoint_dir(workdir), keep=t.keep_checkpoints,
                                   async_save=t.async_checkpoint)
  latest = checkpointer.latest_step()
  saved_meta = checkpointer.read_meta(latest) if latest is not None else None
  model_cfg = build_model_config(config)
  optimizer, schedule = make_optimizer(t)  # validates the schedule before any slow work
  if saved_meta is not None:
    diff = _model_mismatch(saved_meta["model"], model_cfg)
    if not resume or diff:
      what = ("holds a checkpoint of a different model (" + "; ".join(diff) + ")") if diff else \
             f"already holds a checkpoint (step {latest})"
      raise ValueError(f"Workdir {workdir!r} {what}. Pass --resume to continue it"
                       f"{' with the same model config' if diff else ''}, or choose another --workdir.")
  log("Config:\n" + config.to_json_best_effort(indent=2))
  log(f"Devices: {jax.device_count()} x {jax.devices()[0].device_kind} "
      f"({jax.process_count()} process(es)); backend {jax.default_backend()}")

  # Tokenizer: a resumed run reuses the exact one it was trained with.
  tok = tokenizers.from_spec(saved_meta["tokenizer"]) if saved_meta else build_tokenizer(config)
  check_config(config, model_cfg, tok)
  log(summary(model_cfg))
  log(f"Tokenizer: {tok.name}, {tok.vocab_size} ids")

  data = build_token_dataset(config.data, tok, seq_len=t.seq_len, log=log)
  sampler = BatchSampler(data.train, seq_len=t.seq_len, global_batch_size=t.batch_size,
                         seed=t.seed, process_index=jax.process_index(),
                         process_count=jax.process_count())
  val_local = eval_batches(data.val, seq_len=t.seq_len, batch_size=t.batch_size,
                           num_batches=t.eval_batches, process_index=jax.process_index(),
                           process_count=jax.process_count())

  mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
  abstract = jax.eval_shape(lambda: create_state(init_params(model_cfg, jax.random.PRNGKey(t.seed)),
                                                 optimizer, t.seed))
  state_sh = state_shardings(abstract, mesh)
  step_fn, batch_sh = jit_train_step(model_cfg, optimizer, schedule, state_sh, mesh)
  eval_fn = jax.jit(functools.partial(eval_step, model_cfg=model_cfg),
                    in_shardings=(state_sh.params, parallel.batch_sharding(mesh)),
                    out_shardings=parallel.replicated(mesh))

  if saved_meta is not None:
    params, opt_state, meta = checkpointer.restore(
        latest, ckpt.abstract_like(abstract.params, state_sh.params),
        ckpt.abstract_like(abstract.opt_state, state_sh.opt_state))
    state = TrainState(step=jax.device_put(jnp.int32(meta["step"]), state_sh.step),
                       params=params, opt_state=opt_state,
                       rng=jax.device_put(jnp.asarray(meta["rng"], jnp.uint32), state_sh.rng))
    log(f"Resumed from step {meta['step']} ({checkpointer.directory})")
  else:
    init = jax.jit(lambda: create_state(init_params(model_cfg, jax.random.PRNGKey(t.seed)),
                                        optimizer, t.seed), out_shardings=state_sh)
    state = init()
  start = int(jax.device_get(state.step))
  counts = count_params(model_cfg)
  log(f"Parameters: {counts['total']:,} total, {counts['non_embedding']:,} non-embedding")

  micro = t.batch_size // t.grad_accum
  global_shape = (t.grad_accum, micro, t.seq_len + 1)

  def device_batch(step: int) -> jax.Array:
    local = sampler.batch(step)  # [B / processes, T + 1] rows of this process
    local = local.reshape(t.grad_accum, -1, t.seq_len + 1)
    return parallel.global_array(local, batch_sh, global_shape)

  def evaluate() -> float:
    losses = [eval_fn(state.params, parallel.global_array(
        b, parallel.batch_sharding(mesh), (b.shape[0] * jax.process_count(), b.shape[1])))
        for b in val_local]
    return float(np.mean(jax.device_get(losses)))

  metrics_log = reporting.MetricsLog(os.path.join(workdir, "metrics.jsonl"), is_main_process())
  peak, peak_src = reporting.peak_flops_per_device(t.peak_flops)
  flops_tok = flops_per_token(model_cfg, t.seq_len)
  log(f"MFU denominator: {peak / 1e12:.3g} TFLOP/s per device ({peak_src}); "
      f"{flops_tok / 1e6:.4g} MFLOP per token (6N + 12·L·H·T)")
  progress = reporting.Progress(t.steps, is_main_process())

  def meta_for(step: int, rng, last: dict) -> dict:
    return {"step": step, "rng": [int(x) for x in np.asarray(jax.device_get(rng)).ravel()],
            "data": {"next_batch": step, "seed": t.seed, "token_cache": data.path},
            "config": json.loads(config.to_json_best_effort()), "model": model_cfg.to_dict(),
            "tokenizer": tok.spec(), "metrics": last, "jax_version": jax.__version__}

  pending: list[tuple[int, dict]] = []
  last: dict = {}
  tokens_per_step = t.batch_size * t.seq_len

  window = {"t0": time.perf_counter(), "steps": 0}  # training steps since the last log

  def flush() -> None:
    """Bring pending step metrics to the host, stop on NaN, log them.

    Throughput covers the training steps since the previous log (device work
    included: fetching the metrics waits for it), not evaluation or saving.
    """
    nonlocal last
    if not pending:
      return
    host = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, host):
      m = {k: float(v) for k, v in m.items()}
      if not all(math.isfinite(v) for v in m.values()):
        raise TrainingDiverged(
            f"Loss became {m['loss']} at step {s + 1} (grad norm {m['grad_norm']}). Stopped "
            f"without saving it; the last good checkpoint in {checkpointer.directory} is step "
            f"{checkpointer.latest_step()}. Lower train.lr or raise train.warmup_steps, then "
            f"--resume.")
      last = {"step": s + 1, **m}
    pending.clear()
    tps = tokens_per_step * window["steps"] / max(time.perf_counter() - window["t0"], 1e-9)
    mfu = tps * flops_tok / (peak * jax.device_count()) if peak else float("nan")
    last.update(tokens_per_s=tps, mfu=mfu)
    metrics_log.write(last)
    progress.update(last["step"], loss=last["loss"], lr=last["lr"], tok_s=round(tps),
                    mfu=f"{100 * mfu:.1f}%")
    restart_window()

  def restart_window() -> None:
    window.update(t0=time.perf_counter(), steps=0)

  def save(step: int) -> None:
    checkpointer.save(step, state.params, state.opt_state, meta_for(step, state.rng, last))

  # Ctrl-C or SIGTERM (preemption): finish the step, save, exit cleanly.
  interrupted = {"flag": False}
  old_handlers = {}

  def on_signal(signum, frame):
    interrupted["flag"] = True
  if is_main_process():
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        old_handlers[sig] = signal.signal(sig, on_signal)
      except ValueError:  # not the main thread
        pass

  step = start
  result: dict[str, Any] = {"workdir": workdir, "start_step": start}
  try:
    if start == 0:
      val = evaluate()
      metrics_log.write({"step": 0, "val_loss": val, "val_ppl": math.exp(min(val, 50))})
      log(f"step 0: validation loss {val:.4f} (ppl {math.exp(min(val, 50)):.1f})")
    restart_window()
    while step < t.steps:
      state, metrics = step_fn(state, device_batch(step))
      pending.append((step, metrics))
      step += 1
      window["steps"] += 1
      if step == start + 1 or step % t.log_every == 0 or step == t.steps:
        flush()  # the first step's rate includes compilation
      if step % t.eval_every == 0 or step == t.steps:
        flush()
        val = evaluate()
        metrics_log.write({"step": step, "val_loss": val, "val_ppl": math.exp(min(val, 50))})
        progress.newline()
        log(f"step {step}: validation loss {val:.4f} (ppl {math.exp(min(val, 50)):.2f})")
        last["val_loss"] = val
        restart_window()
      if step % t.checkpoint_every == 0 or step == t.steps:
        flush()
        save(step)
        restart_window()
      if interrupted["flag"]:
        flush()
        save(step)
        checkpointer.wait()
        progress.newline()
        log(f"Interrupted: saved step {step} to {checkpointer.directory}; continue with --resume.")
        result.update(interrupted=True)
        break
  finally:
    checkpointer.wait()
    for sig, h in old_handlers.items():
      signal.signal(sig, h)
  progress.newline()
  result.update(step=step, last=last, checkpoint_dir=checkpointer.directory,
                params=state.params, tokenizer=tok, model_cfg=model_cfg)
  if step >= t.steps and not result.get("interrupted"):
    result["samples"] = print_samples(model_cfg, state.params, tok, t)
  if is_main_process():
    result["plot"] = reporting.plot_losses(metrics_log.read(), os.path.join(workdir, "loss.png"))
    log(f"Wrote {metrics_log.path}" + (f" and {result['plot']}" if result["plot"] else ""))
  checkpointer.close()
  return result


def print_samples(model_cfg, params, tok, t) -> list[str]:
  prompts = [p for p in t.sample_prompts if p]
  if not prompts or not is_main_process():
    return []
  max_new = min(t.sample_tokens, model_cfg.max_seq_len - max(len(tok.encode(p)) for p in prompts))
  params = jax.device_get(params)
  outs = sample_reference(model_cfg, params, [tok.encode(p) for p in prompts],
                          max_new_tokens=max_new, temperature=0.0, eos_id=tok.eos_id)
  texts = [p + tok.decode(o) for p, o in zip(prompts, outs)]
  for text in texts:
    log("--- sample (greedy) ---\n" + text)
  return texts
