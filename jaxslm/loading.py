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

  def __repr__(self) -> str:   # what a notebook cell shows: no arrays, no tokenizer data
    leaves = jax.tree.leaves(self.params)
    count = sum(int(getattr(x, "size", 0)) for x in leaves)
    dtypes = "/".join(sorted({str(getattr(x, "dtype", "?")) for x in leaves})) or "no params"
    cfg, tok = self.model_cfg, self.tokenizer
    kind = (self.meta.get("hf") or {}).get("model_type") or "jaxslm"
    step = self.meta.get("step")
    return (f"Loaded({kind} decoder, {cfg.n_layers} layers, d_model {cfg.d_model}, context "
            f"{cfg.max_seq_len}, vocab {cfg.vocab_size}; {count:,} params ({dtypes}), compute "
            f"{cfg.dtype}; tokenizer {getattr(tok, 'name', '?')!r} ({type(tok).__name__})"
            + (f"; step {step}" if step is not None else "") + f"; path {self.path!r})")


def load(path: str, device: jax.Device | None = None) -> Loaded:
  """Restore from a run's workdir (latest step), its checkpoints/ dir or a step dir.

  Params land on one `device` (default: the first), whatever mesh saved them,
  so a checkpoint from a GPU pod opens on a laptop.
  """
  step_dir = ckpt.resolve_step_dir(path)
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
