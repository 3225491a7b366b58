"""`jaxslm.load(path)`: model config, params and tokenizer from a checkpoint."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxslm import checkpoint as ckpt
from jaxslm import tokenizers
from jaxslm.models import ModelConfig


@dataclasses.dataclass
class Loaded:
  model_cfg: ModelConfig
  params: Any
  tokenizer: tokenizers.Tokenizer
  meta: dict
  path: str

  def __iter__(self):  # model_cfg, params, tok = jaxslm.load(...)
    return iter((self.model_cfg, self.params, self.tokenizer))


def load(path: str) -> Loaded:
  """Restore from a run's workdir (latest step), its checkpoints/ dir or a step dir."""
  step_dir = ckpt.resolve_step_dir(path)
  meta = ckpt.read_step_meta(step_dir)
  model_cfg = ModelConfig.from_dict(meta["model"])
  params = ckpt.read_step_params(step_dir)
  return Loaded(model_cfg, params, tokenizers.from_spec(meta["tokenizer"]), meta, step_dir)
