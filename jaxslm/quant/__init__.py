"""Quantized weights as parameter-tree transforms: QLoRA's NF4 and int8.

  * `jaxslm.quant.nf4`: NormalFloat-4 with double quantization (Dettmers et
    al. 2023, "QLoRA"), the frozen base of QLoRA fine-tuning;
  * `jaxslm.quant.int8`: int8 with per-output-channel scales, for inference
    (`quantize="int8"` in `jaxslm.load` and the launchers).

Either swaps matching 2-D kernels of a params tree for a pytree leaf
(`NF4Weight`, `Int8Weight`) that `jaxslm.ops.dense` understands inside the
jitted forward. Every public name is importable from `jaxslm.quant`.

Example::

  import jax, jax.numpy as jnp
  from jaxslm import quant

  w_io = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (384, 1536))
  q = quant.quantize_nf4(w_io)                      # NF4Weight, ~0.26x bf16
  w2_io = quant.dequantize(q, jnp.bfloat16)         # [384, 1536] bf16

  params = {"layers_0": {"attn": {"q_proj": {"kernel": w_io}}}}
  qparams = quant.quantize_params(params, targets=r"attn/q_proj/kernel$")
  print(quant.quantized_bytes_report(qparams))
  int8 = quant.apply_quantize(params, "int8")       # q_proj/kernel as an Int8Weight
"""

from __future__ import annotations

from typing import Any

import jax

from jaxslm.errors import UserError
from jaxslm.quant.base import is_quantized
from jaxslm.quant.int8 import (INT8_MATMULS, INT8_MIN_IN, INT8_TARGETS, QUANTIZE_CHOICES,
                               QUANTIZE_MODES, Int8Weight, apply_quantize, dequantize_int8,
                               int8_report, quantize_int8, quantize_int8_params)
from jaxslm.quant.nf4 import (NF4_CODEBOOK, NF4Weight, block_scales, dequantize_nf4,
                              quantize_nf4, quantize_params, quantized_bytes_report)

__all__ = [
    "NF4_CODEBOOK", "NF4Weight", "quantize_nf4", "dequantize", "quantize_params",
    "is_quantized", "quantized_bytes_report", "block_scales",
    "Int8Weight", "quantize_int8", "quantize_int8_params", "int8_report", "apply_quantize",
    "QUANTIZE_CHOICES", "QUANTIZE_MODES", "INT8_TARGETS", "INT8_MATMULS", "INT8_MIN_IN",
]


def dequantize(w, dtype: Any = None) -> jax.Array:
  """The float matrix of a quantized leaf in `dtype` (default: the weight's original dtype)."""
  if isinstance(w, Int8Weight):
    return dequantize_int8(w, dtype)
  if isinstance(w, NF4Weight):
    return dequantize_nf4(w, dtype)
  raise UserError(f"dequantize takes an NF4Weight or Int8Weight, got {type(w).__name__}; "
                  "quantize it with quantize_nf4 / quantize_params first.")
