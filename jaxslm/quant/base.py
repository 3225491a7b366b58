"""What the quantized weights share: the array-like base class, the leaf test,
and the '/'-joined parameter paths the transforms match their targets against."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

INT8_MAX = 127.0


class _QuantizedMatrix:
  """What a quantized 2-D weight answers like an array: its logical `shape`
  (each class defines it), `ndim`, `size` and `dtype` (the dtype the weight
  had before quantization, dequantize's default)."""

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype_name)



def is_quantized(leaf: Any) -> bool:
  """True for a quantized weight leaf (`NF4Weight`, `Int8Weight`)."""
  return isinstance(leaf, _QuantizedMatrix)


def _path_str(path) -> str:
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    else:
      parts.append(str(key))
  return "/".join(parts)


def _leaves_with_paths(params) -> list[tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_quantized)
  return [(_path_str(p), leaf) for p, leaf in flat]

