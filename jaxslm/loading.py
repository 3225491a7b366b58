"""`jaxslm.load(path)`: model config, params and tokenizer from a checkpoint."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxslm import checkpoint as ckpt
from jaxslm import tokenizers
from jaxslm.models import ModelConfig
from jaxslm.models.summary import param_shapes


@dataclasses.dataclass
class Loaded:
  model_cfg: ModelConfig
  params: Any
  tokenizer: tokenizers.Tokenizer
  meta: dict
  path: str

  def __iter__(self):  # model_cfg, params, tok = jaxslm.load(...)
    return iter((self.model_cfg, self.params, self.tokenizer))


def load(path: str, device: jax.Device | None = None) -> Loaded:
  """Restore from a run's workdir (latest step), its checkpoints/ dir or a step dir.

  Params land on one `device` (default: the first), whatever mesh saved them,
  so a checkpoint from a GPU pod opens on a laptop. What is read is verified
  against the checksums saved with it: a damaged step raises one
  `DamagedCheckpoint` line naming it and the newest intact step beside it.
  """
  step_dir = ckpt.resolve_step_dir(path)
  try:
    return _load_step(path, step_dir, device)
  except ckpt.DamagedCheckpoint as e:
    if e.step_dir != step_dir:   # another checkpoint (a fine-tuning run's base): its own message
      raise
    from jaxslm import integrity
    raise integrity.damaged_load_error(e) from None


def _load_step(path: str, step_dir: str, device) -> Loaded:
  meta = ckpt.read_step_meta(step_dir)
  if "lora" in meta and "model" not in meta:
    from jaxslm.errors import UserError
    raise UserError(f"{path!r} holds LoRA adapters alone, not a model; load its base and "
                    "apply them: jaxslm.lora.load_adapters(path, jaxslm.load(BASE).params), "
                    "or load the fine-tuning workdir (or its export/) instead.")
  if "finetune" in meta:   # trainable leaves only: rebuild base + adapters
    from jaxslm.train.finetune import load_finetuned
    return load_finetuned(step_dir, meta, device)
  model_cfg = ModelConfig.from_dict(meta["model"])
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        param_shapes(model_cfg))
  params = ckpt.read_step_params(step_dir, target)
  return Loaded(model_cfg, params, tokenizers.from_spec(meta["tokenizer"]), meta, step_dir)
