"""`jaxslm.load(path)`: model config, params and tokenizer from a checkpoint.

A fine-tuning or GRPO checkpoint holds the trainable leaves only; loading it
loads its base (`init_from`, itself through `load`), applies the method's
transform (`build_params`: NF4 for QLoRA, earlier adapters for stacked LoRA,
a new adapter) and restores the saved leaves into it, adapters unmerged. The
trainers build their policy with the same functions, so a checkpoint always
loads as the tree that was trained.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from jaxslm import checkpoint as ckpt
from jaxslm import lora, paths, quant, tokenizers
from jaxslm.errors import UserError
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


def load(path: str, device: jax.Device | None = None, quantize: str | None = None) -> Loaded:
  """Restore from a run's workdir (latest step), its checkpoints/ dir or a step dir.

  Params land on one `device` (default: the first), whatever mesh saved them,
  so a checkpoint from a GPU pod opens on a laptop. What is read is verified
  against the checksums saved with it: a damaged step raises one
  `DamagedCheckpoint` line naming it and the newest intact step beside it.
  `quantize="int8"` stores the projection kernels as int8 for inference
  (weight-only; "int8-dynamic" quantizes activations and the head too:
  `jaxslm.quant.apply_quantize`).
  """
  if quantize not in (None, "none"):
    return quant.apply_quantize(load(path, device), quantize)
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
    raise UserError(f"{path!r} holds LoRA adapters alone, not a model; load its base and "
                    "apply them: jaxslm.lora.load_adapters(path, jaxslm.load(BASE).params), "
                    "or load the fine-tuning workdir (or its export/) instead.")
  if "finetune" in meta:   # trainable leaves only: rebuild base + adapters
    return load_finetuned(step_dir, meta, device)
  model_cfg = ModelConfig.from_dict(meta["model"])
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        param_shapes(model_cfg))
  params = ckpt.read_step_params(step_dir, target)
  return Loaded(model_cfg, params, tokenizers.from_spec(meta["tokenizer"]), meta, step_dir)


# ------------------------------------------------ a base checkpoint + a fine-tuning method
def lora_config(config):
  c = config.lora
  return lora.LoraConfig(rank=c.rank, alpha=c.alpha, dropout=c.dropout, targets=c.targets,
                         rslora=c.rslora)


def build_params(config, base_params, *, seed: int):
  """(params, trainable-kind) for the method: the transformed tree and what trains."""
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


def load_base(config):
  """(model_cfg, params, tokenizer, base meta) of `init_from`, compute dtype overridden."""
  base = load(config.init_from)
  model_cfg = base.model_cfg
  if config.model_dtype:
    model_cfg = dataclasses.replace(model_cfg, dtype=config.model_dtype)
  return model_cfg, base.params, base.tokenizer, base


def load_finetuned(step_dir: str, meta: dict, device=None):
  """A fine-tuning checkpoint as a ready model: the base from `init_from`, the
  method's transform, and the saved trainable leaves (adapters stay unmerged)."""
  config = ml_collections.ConfigDict(meta["config"])
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
