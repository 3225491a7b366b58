"""Models: one configurable decoder driven by a frozen `ModelConfig`."""

from jaxslm.models.config import PRESETS, ModelConfig
from jaxslm.models.decoder import Decoder, init_cache
from jaxslm.models.summary import count_params, flops_per_token, init_params, summary

__all__ = ["PRESETS", "ModelConfig", "Decoder", "count_params", "flops_per_token",
           "init_cache", "init_params", "summary"]
