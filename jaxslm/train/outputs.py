"""What a fine-tuning or GRPO run leaves in its workdir besides checkpoints:
summary.json, adapters/ (the LoRA adapters alone) and export/ (the merged
model), each replaced so that a crash never leaves a half-written directory."""

from __future__ import annotations

import json
import os

import jax

from jaxslm import checkpoint as ckpt
from jaxslm import paths
from jaxslm.train import parallel
from jaxslm.train.session import is_main_process, log


def write_summary(workdir: str, summary: dict) -> None:
  if is_main_process():
    paths.write_text(paths.join(workdir, "summary.json"), json.dumps(summary, indent=2))


def final_outputs(workdir, config, params, mesh, trainable_kind, meta_base, last,
                  summary: dict) -> dict:
  """After the last step of fine-tuning or GRPO: adapters/, export/ and
  summary.json. Every process takes part (the params are gathered, a
  collective); process 0 writes."""
  whole = parallel.gathered(params, mesh)
  out = write_outputs(workdir, config, whole, trainable_kind, meta_base, last)
  del whole
  write_summary(workdir, summary)
  return {**out, "summary": summary}


def write_outputs(workdir, config, params, trainable_kind, meta_base, last) -> dict:
  """adapters/ (LoRA methods) and export/ (merged, plain params), replaced atomically.
  Process 0 writes them alone, from its host copy of the params: pass them
  replicated (`parallel.gathered`) in a multi-process run."""
  from jaxslm import lora
  out = {}
  if not is_main_process():
    return out
  if jax.process_count() > 1:
    params = jax.device_get(parallel.local_replica(params))
  meta = {k: v for k, v in meta_base.items() if k != "finetune"}
  meta.update(step=last.get("step"), metrics=last,
              config={**meta_base["config"], "sft": {"template": config.data.template}})
  if trainable_kind != "all":
    out["adapters"] = _replace_dir(paths.join(workdir, "adapters"), lambda d: lora.save_adapters(
        d, params, {"base": meta_base["finetune"]["init_from"], "method": config.method}))
    merged = lora.merge(params)
  else:
    merged = params
  out["export"] = _replace_dir(paths.join(workdir, "export"),
                               lambda d: ckpt.save_params(d, merged, meta))
  log(f"Wrote {out.get('adapters', '')} {out['export']}".replace("  ", " "))
  return out


def _replace_dir(path: str, write) -> str:
  """Write a directory beside `path`, then swap it in: the old one survives a crash.
  An object store (gs://) has no rename: there the old one is removed first and
  the new one written in place (finished when its commit files are there)."""
  if paths.is_remote(path):
    paths.rmtree(path)
    write(path)
    return path
  import shutil
  tmp, old = path + ".new", path + ".old"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.rmtree(old, ignore_errors=True)   # left by a crash during an earlier swap
  write(tmp)
  if os.path.exists(path):
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)
  return path
