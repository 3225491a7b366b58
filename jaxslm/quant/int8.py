"""int8 weights for inference, as a parameter-tree transform.

`quantize_int8_params` stores each projection kernel as int8 with one float32
absmax scale per output channel (`Int8Weight`), a quarter of the float32
bytes (docs/inference.md: what that buys on CPUs and GPUs). `jaxslm.ops.dense`
runs such a kernel in one of two forms:

  * "dequantize" (weight-only, the default): x @ q in the compute dtype, times
    the scales; the activations stay exact;
  * "int8_dot": an int8 x int8 dot on activations quantized per token (absmax,
    the "vector-wise" scheme of LLM.int8(), Dettmers et al. 2022, without its
    outlier split): faster at batch on XLA:CPU, less accurate.

`apply_quantize(model, "int8")` is what `jaxslm.load`, the launchers and the
lm-eval backend call.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxslm.errors import UserError
from jaxslm.quant.base import INT8_MAX, _QuantizedMatrix, _leaves_with_paths, _path_str, \
    is_quantized


@flax.struct.dataclass
class Int8Weight(_QuantizedMatrix):
  """A 2-D matrix as int8 codes times one float32 scale per output channel.

  q: int8 [in, out]; scale: float32 [out] (absmax / 127 of each output
  channel). A kernel [in, out] has channel_axis=1 and q is the kernel. An
  embedding [V, D] (the tied output head: V output channels) has
  channel_axis=0 and q is stored transposed, [D, V], so the head is the same
  int8 matmul as any kernel (XLA:CPU's int8 dot is slow on the other layout);
  `shape` is always the logical one.
  Static: dtype_name (dequantize's default dtype), matmul ("dequantize":
  (x @ q) * scale, activations exact; "int8_dot": int8 codes of the
  activations too, per token).
  """
  q: jax.Array
  scale: jax.Array
  channel_axis: int = flax.struct.field(pytree_node=False, default=1)
  dtype_name: str = flax.struct.field(pytree_node=False, default="float32")
  matmul: str = flax.struct.field(pytree_node=False, default="dequantize")

  @property
  def shape(self) -> tuple:
    return tuple(self.q.shape[::-1] if self.channel_axis == 0 else self.q.shape)

  @property
  def nbytes(self) -> int:
    return self.size + 4 * self.q.shape[1]


def dequantize_int8(w: Int8Weight, dtype: Any = None) -> jax.Array:
  """The logical float matrix of an Int8Weight in `dtype` (default: its original dtype)."""
  x_io = w.q.astype(jnp.float32) * w.scale[None, :]
  return (x_io.T if w.channel_axis == 0 else x_io).astype(w.dtype if dtype is None else dtype)


# What `quantize=` accepts (jaxslm.load, launch/sample.py, launch/eval.py, the
# lm-eval backend): the transform's arguments for each.
QUANTIZE_MODES = {
    # weight-only int8 of the projections: the quality choice (perplexity of a
    # real 135M model within 1% of float32, BENCHMARKS.md) and, on GPUs, the
    # bandwidth one (the convert fuses into the dot)
    "int8": dict(embeddings=False, matmul="dequantize"),
    # activations quantized per token too, and the embedding/head: XLA:CPU's
    # integer GEMM makes it the fast form at batch 16 and up, at a few % of perplexity
    "int8-dynamic": dict(embeddings=True, matmul="int8_dot"),
}
QUANTIZE_CHOICES = ("none", *QUANTIZE_MODES)
INT8_TARGETS = r"_proj/kernel$"
INT8_MATMULS = ("dequantize", "int8_dot")
# Kernels with fewer input rows than this stay in float: the per-channel
# scales and the activation codes would cost more than the weights save.
INT8_MIN_IN = 32


def quantize_int8(w: jax.Array, channel_axis: int = 1, matmul: str = "dequantize") -> Int8Weight:
  """Symmetric absmax int8 of a 2-D matrix, one scale per `channel_axis` slice."""
  if getattr(w, "ndim", None) != 2 or not jnp.issubdtype(w.dtype, jnp.floating):
    raise UserError(f"quantize_int8 takes a 2-D float matrix, got "
                    f"{getattr(w, 'shape', type(w).__name__)} {getattr(w, 'dtype', '')}; "
                    "pass the float weights, not already-quantized ones.")
  if matmul not in INT8_MATMULS:
    raise UserError(f"matmul={matmul!r}: expected one of {', '.join(INT8_MATMULS)}.")
  w32 = w.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w32), axis=1 - channel_axis)
  scale = jnp.where(absmax > 0, absmax, 1.0) / INT8_MAX
  expanded = scale[:, None] if channel_axis == 0 else scale[None, :]
  q = jnp.clip(jnp.round(w32 / expanded), -INT8_MAX, INT8_MAX).astype(jnp.int8)
  if channel_axis == 0:
    q = q.T          # stored [D, V]: the head's x @ E^T is then a plain [in, out] matmul
  return Int8Weight(q=q, scale=scale.astype(jnp.float32), channel_axis=channel_axis,
                    dtype_name=jnp.dtype(w.dtype).name, matmul=matmul)


def quantize_int8_params(params, targets: str = INT8_TARGETS, embeddings: bool = False,
                         matmul: str = "dequantize", log=None):
  """`params` with every float 2-D leaf whose path matches `targets` as an Int8Weight.

  embeddings=True also quantizes the embedding `embed` (per-row scales: they
  serve the lookup and, when tied, the output head) and an untied
  `lm_head/kernel`: in a small model the head is a large share of the bytes a
  decode step reads, and the largest share of the perplexity int8 costs.
  `matmul`: "dequantize" (weight-only) or "int8_dot" (see the module doc).
  Kernels with fewer than INT8_MIN_IN input rows stay in float; `log` (default:
  a warning) hears how many, and `int8_report` lists them. An NF4 tree is refused:
  quantize the float checkpoint instead.
  """
  leaves = _leaves_with_paths(params)
  nf4 = [p for p, leaf in leaves if is_quantized(leaf) and not isinstance(leaf, Int8Weight)]
  if nf4:
    raise UserError(f"int8: the params already hold NF4 kernels ({', '.join(nf4[:3])}, ...); "
                    "quantize the float model (load the base checkpoint, or a merged export/).")
  try:
    pattern = re.compile(targets)
  except re.error as e:
    raise UserError(f"targets={targets!r} is not a valid regular expression ({e}).") from None

  def kind(path: str, leaf) -> str | None:
    if getattr(leaf, "ndim", None) != 2 or is_quantized(leaf) or \
        not jnp.issubdtype(leaf.dtype, jnp.floating):
      return None
    if embeddings and path == "embed":
      return "embed"
    if pattern.search(path) or (embeddings and path.endswith("lm_head/kernel")):
      return "kernel" if leaf.shape[0] >= INT8_MIN_IN else "small"
    return None

  kinds = {p: kind(p, leaf) for p, leaf in leaves}
  if not any(k in ("kernel", "embed") for k in kinds.values()):
    raise UserError(f"int8: targets={targets!r} matches no float 2-D parameter with at least "
                    f"{INT8_MIN_IN} input rows; 2-D paths: "
                    f"{', '.join(p for p, l in leaves if getattr(l, 'ndim', 0) == 2) or '(none)'}.")
  small = [p for p, k in kinds.items() if k == "small"]
  if small:
    (log or (lambda m: warnings.warn(m, stacklevel=3)))(f"int8: kept {len(small)} kernel(s) with fewer than {INT8_MIN_IN} input rows in float "
        f"({', '.join(small[:4])}{', ...' if len(small) > 4 else ''})")

  def convert(path, leaf):
    k = kinds.get(_path_str(path))
    if k == "kernel":
      return quantize_int8(leaf, 1, matmul)
    if k == "embed":
      return quantize_int8(leaf, 0, matmul)
    return leaf
  return jax.tree_util.tree_map_with_path(convert, params, is_leaf=is_quantized)


def int8_report(params, targets: str = INT8_TARGETS) -> dict:
  """Counts and bytes of an int8 tree: quantized matrices, their bytes against
  float32, and the target kernels left in float (too small)."""
  leaves = _leaves_with_paths(params)
  int8 = [leaf for _, leaf in leaves if isinstance(leaf, Int8Weight)]
  pattern = re.compile(targets)
  kept = [p for p, leaf in leaves if not is_quantized(leaf) and getattr(leaf, "ndim", 0) == 2
          and pattern.search(p)]
  n = sum(w.size for w in int8)
  total = sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize
              for _, leaf in leaves if not is_quantized(leaf))
  return {"int8_matrices": len(int8), "int8_params": n,
          "int8_bytes": sum(w.nbytes for w in int8), "float32_bytes_of_them": 4 * n,
          "other_bytes": total, "kept_in_float": kept}


def apply_quantize(model, quantize: str | None, log=None):
  """`model` transformed for `quantize` (one of QUANTIZE_CHOICES; None = "none";
  QUANTIZE_MODES says what each int8 mode quantizes and how it multiplies).

  `model` is a params tree, or a loaded model (a dataclass with `params` and
  `meta`, as `jaxslm.load` returns: the copy's meta gains "quantize").
  """
  value = "none" if quantize is None else str(quantize).strip().lower()
  if value not in QUANTIZE_CHOICES:
    raise UserError(f"quantize={quantize!r} is not supported; valid values: "
                    f"{', '.join(QUANTIZE_CHOICES)}.")
  if value == "none":
    return model
  if dataclasses.is_dataclass(model) and hasattr(model, "params"):
    return dataclasses.replace(
        model, params=quantize_int8_params(model.params, log=log, **QUANTIZE_MODES[value]),
        meta={**getattr(model, "meta", {}), "quantize": value})
  return quantize_int8_params(model, log=log, **QUANTIZE_MODES[value])
