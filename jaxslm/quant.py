"""Quantized weights as parameter-tree transforms: QLoRA's NF4 and int8.

NormalFloat-4 (Dettmers et al. 2023, "QLoRA") stores each weight as a 4-bit
index into a 16-value codebook built from quantiles of N(0, 1), times the
absmax of its block of 64 weights. Double quantization stores those float32
block scales themselves as int8 codes (after subtracting their mean) with
one float32 scale per 256 of them, bringing the overhead from 0.5 to about
0.127 bits per parameter.

`quantize_params` swaps every matching 2-D kernel for an `NF4Weight` pytree;
`jaxslm.ops.dense` calls `dequantize` on such a leaf inside the jitted
forward (a codebook gather and a multiply, fused by XLA). The base weights
stay frozen; train LoRA adapters on top of them (QLoRA).

Example::

  import jax, jax.numpy as jnp
  from jaxslm import quant

  w_io = 0.02 * jax.random.normal(jax.random.PRNGKey(0), (384, 1536))
  q = quant.quantize_nf4(w_io)                      # NF4Weight, ~0.26x bf16
  w2_io = quant.dequantize(q, jnp.bfloat16)         # [384, 1536] bf16

  params = {"layers_0": {"attn": {"q_proj": {"kernel": w_io}}}}
  qparams = quant.quantize_params(params, targets=r"attn/q_proj/kernel$")
  print(quant.quantized_bytes_report(qparams))

int8 for inference: `quantize_int8_params` stores each projection kernel as
int8 with one float32 absmax scale per output channel (`Int8Weight`), a
quarter of the float32 bytes (docs/inference.md: what that buys on CPUs and GPUs). `jaxslm.ops.dense` runs such a
kernel as an int8 x int8 dot on activations quantized per token (absmax, the
"vector-wise" scheme of LLM.int8(), Dettmers et al. 2022, without its outlier
split), or, with `matmul="dequantize"`, as x @ dequantize(w).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from statistics import NormalDist
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxslm.errors import UserError

__all__ = [
    "NF4_CODEBOOK", "NF4Weight", "quantize_nf4", "dequantize", "quantize_params",
    "is_quantized", "quantized_bytes_report", "block_scales",
    "Int8Weight", "quantize_int8", "quantize_int8_params", "int8_report", "apply_quantize",
    "QUANTIZE_CHOICES", "INT8_TARGETS",
]


def _nf4_codebook() -> np.ndarray:
  """The 16 NF4 levels: 8 positive and 7 negative N(0,1) quantiles, plus 0, in [-1, 1].

  The paper estimates 2^(k-1) quantiles for the negative half and 2^(k-1)+1 for
  the positive half, then merges the two zeros. The outermost probability is
  the midpoint of 1 - 1/(2*15) and 1 - 1/(2*16) (the extreme quantiles of a
  15- and a 16-level grid), so that the finite extremes normalize to exactly +-1.
  """
  normal = NormalDist()
  p_max = 0.5 * ((1.0 - 1.0 / 30.0) + (1.0 - 1.0 / 32.0))
  positive = [normal.inv_cdf(p) for p in np.linspace(p_max, 0.5, 9)[:-1]]
  negative = [-normal.inv_cdf(p) for p in np.linspace(p_max, 0.5, 8)[:-1]]
  levels = np.sort(np.array(positive + [0.0] + negative)) / normal.inv_cdf(p_max)
  levels[0], levels[7], levels[-1] = -1.0, 0.0, 1.0   # exact despite rounding
  out = levels.astype(np.float32)
  out.flags.writeable = False
  return out


NF4_CODEBOOK: np.ndarray = _nf4_codebook()
# Decision boundaries: a normalized weight maps to the nearest level.
_NF4_MIDPOINTS = ((NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2).astype(np.float32)
_INT8_MAX = 127.0


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


@flax.struct.dataclass
class NF4Weight(_QuantizedMatrix):
  """A 2-D kernel [in, out] in NF4 with per-block absmax scales.

  Arrays (pytree children):
    codes_n: uint8[n_pad // 2], two 4-bit codebook indices per byte (high
      nibble first) of the row-major flattened, zero-padded weight.
    scales_b: float32[n_blocks] block absmax, or None with double quant.
    scale_codes_b: int8[n_blocks padded to scale_block_size], double quant.
    scale_scales_s: float32[n_blocks_padded // scale_block_size], absmax of
      each group of (scale - offset), double quant.
    scale_offset: float32[] mean of the block scales, double quant.
  Static metadata: shape (logical [in, out]), dtype_name (default dequantize
  dtype, the original weight's), block_size, scale_block_size.
  """
  codes_n: jax.Array
  scales_b: jax.Array | None = None
  scale_codes_b: jax.Array | None = None
  scale_scales_s: jax.Array | None = None
  scale_offset: jax.Array | None = None
  shape: tuple[int, int] = flax.struct.field(pytree_node=False, default=(0, 0))
  dtype_name: str = flax.struct.field(pytree_node=False, default="float32")
  block_size: int = flax.struct.field(pytree_node=False, default=64)
  scale_block_size: int = flax.struct.field(pytree_node=False, default=256)

  @property
  def double_quant(self) -> bool:
    return self.scales_b is None

  @property
  def n_blocks(self) -> int:
    return -(-self.size // self.block_size)

  def _arrays(self) -> list:
    return [a for a in (self.codes_n, self.scales_b, self.scale_codes_b,
                        self.scale_scales_s, self.scale_offset) if a is not None]

  @property
  def nbytes(self) -> int:
    """Storage bytes of all arrays (codes incl. padding, and every scale level)."""
    return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in self._arrays())

  @property
  def scale_nbytes(self) -> int:
    """Bytes spent on scales (everything but the 4-bit codes)."""
    return self.nbytes - math.prod(self.codes_n.shape) * jnp.dtype(self.codes_n.dtype).itemsize


@flax.struct.dataclass
class Int8Weight(_QuantizedMatrix):
  """A 2-D matrix as int8 codes times one float32 scale per output channel.

  q: int8 [in, out]; scale: float32 [out] (absmax / 127 of each output
  channel). A kernel [in, out] has channel_axis=1 and q is the kernel. An
  embedding [V, D] (the tied output head: V output channels) has
  channel_axis=0 and q is stored transposed, [D, V], so the head is the same
  int8 matmul as any kernel (XLA:CPU's int8 dot is slow on the other layout);
  `shape` is always the logical one.
  Static: dtype_name (dequantize's default dtype), matmul ("int8_dot": int8
  codes of the activations too, per token; "dequantize": x @ (q * scale)).
  """
  q: jax.Array
  scale: jax.Array
  channel_axis: int = flax.struct.field(pytree_node=False, default=1)
  dtype_name: str = flax.struct.field(pytree_node=False, default="float32")
  matmul: str = flax.struct.field(pytree_node=False, default="int8_dot")

  @property
  def shape(self) -> tuple:
    return tuple(self.q.shape[::-1] if self.channel_axis == 0 else self.q.shape)

  @property
  def nbytes(self) -> int:
    return self.size + 4 * self.q.shape[1]


def is_quantized(leaf: Any) -> bool:
  """True for an `NF4Weight` or `Int8Weight` leaf."""
  return isinstance(leaf, (NF4Weight, Int8Weight))


def _check_block(name: str, value: Any, even: bool) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0 \
      or (even and value % 2):
    kind = "a positive even int" if even else "a positive int"
    raise UserError(f"{name}={value!r} must be {kind} (e.g. 64 for block_size, "
                    "256 for scale_block_size).")
  return int(value)


def _pad_to(x_n: jax.Array, multiple: int, value: Any = 0) -> jax.Array:
  pad = -x_n.shape[0] % multiple
  return jnp.pad(x_n, (0, pad), constant_values=value) if pad else x_n


def _double_quantize(scales_b: jax.Array, scale_block_size: int):
  """int8 codes of (scale - mean), symmetric absmax per group of scale_block_size."""
  offset = jnp.mean(scales_b)
  # Pad the deviations with 0 (i.e. the mean): it changes no group's absmax.
  dev_gs = _pad_to(scales_b - offset, scale_block_size).reshape(-1, scale_block_size)
  absmax_g = jnp.max(jnp.abs(dev_gs), axis=1)
  safe_g = jnp.where(absmax_g > 0, absmax_g, 1.0)
  codes_gs = jnp.clip(jnp.round(dev_gs / safe_g[:, None] * _INT8_MAX), -_INT8_MAX, _INT8_MAX)
  return codes_gs.astype(jnp.int8).reshape(-1), absmax_g.astype(jnp.float32), offset


def quantize_nf4(w_io: jax.Array, block_size: int = 64, double_quant: bool = True,
                 scale_block_size: int = 256, dtype: Any = None) -> NF4Weight:
  """Quantize a 2-D kernel [in, out] to NF4 (jittable; block sizes are static).

  Blocks of `block_size` run along the row-major flattened weight, which is
  zero-padded to a multiple of the block. `dtype` is the default dtype of
  `dequantize` (the weight's own dtype if None).
  """
  if getattr(w_io, "ndim", None) != 2:
    raise UserError(f"quantize_nf4 takes a 2-D kernel [in, out], got shape "
                    f"{getattr(w_io, 'shape', type(w_io).__name__)}; reshape it to 2-D first.")
  if not jnp.issubdtype(w_io.dtype, jnp.floating):
    raise UserError(f"quantize_nf4 takes a floating-point kernel, got dtype {w_io.dtype}; "
                    "pass the float weights, not already-quantized ones.")
  block_size = _check_block("block_size", block_size, even=True)
  scale_block_size = _check_block("scale_block_size", scale_block_size, even=False)
  dtype_name = jnp.dtype(dtype if dtype is not None else w_io.dtype).name

  x_kb = _pad_to(jnp.ravel(w_io).astype(jnp.float32), block_size).reshape(-1, block_size)
  absmax_k = jnp.max(jnp.abs(x_kb), axis=1)
  safe_k = jnp.where(absmax_k > 0, absmax_k, 1.0)
  y_kb = x_kb / safe_k[:, None]                       # in [-1, 1]; all-zero blocks stay 0
  codes = jnp.searchsorted(jnp.asarray(_NF4_MIDPOINTS), y_kb.reshape(-1)).astype(jnp.uint8)
  pairs_n2 = codes.reshape(-1, 2)
  packed_n = (pairs_n2[:, 0] << 4) | pairs_n2[:, 1]

  common = dict(shape=tuple(int(d) for d in w_io.shape), dtype_name=dtype_name,
                block_size=block_size, scale_block_size=scale_block_size)
  if not double_quant:
    return NF4Weight(codes_n=packed_n, scales_b=absmax_k.astype(jnp.float32), **common)
  scale_codes, scale_scales, offset = _double_quantize(absmax_k, scale_block_size)
  return NF4Weight(codes_n=packed_n, scale_codes_b=scale_codes, scale_scales_s=scale_scales,
                   scale_offset=offset.astype(jnp.float32), **common)


def block_scales(w: NF4Weight) -> jax.Array:
  """float32[n_blocks] block scales, dequantizing the second level if present."""
  if not w.double_quant:
    return w.scales_b
  codes_gs = w.scale_codes_b.astype(jnp.float32).reshape(-1, w.scale_block_size)
  scales = codes_gs * (w.scale_scales_s[:, None] / _INT8_MAX) + w.scale_offset
  # A scale is an absmax: never negative (clamping only moves it closer).
  return jnp.maximum(scales.reshape(-1)[: w.n_blocks], 0.0)


def _unpack_codes(w: NF4Weight) -> jax.Array:
  """uint8[n_pad] codebook indices from the packed nibbles."""
  return jnp.stack([w.codes_n >> 4, w.codes_n & 0xF], axis=-1).reshape(-1)


def dequantize(w: NF4Weight, dtype: Any = None) -> jax.Array:
  """The [in, out] kernel in `dtype` (default: the weight's original dtype).

  Cheap enough for every forward: a 16-entry gather and a multiply by the
  block scale, computed in float32 and cast once.
  """
  if isinstance(w, Int8Weight):
    x_io = w.q.astype(jnp.float32) * w.scale[None, :]
    return (x_io.T if w.channel_axis == 0 else x_io).astype(w.dtype if dtype is None else dtype)
  if not is_quantized(w):
    raise UserError(f"dequantize takes an NF4Weight or Int8Weight, got {type(w).__name__}; "
                    "quantize it with quantize_nf4 / quantize_params first.")
  values_kb = jnp.asarray(NF4_CODEBOOK)[_unpack_codes(w)].reshape(-1, w.block_size)
  x_kb = values_kb * block_scales(w)[:, None]
  out_dtype = w.dtype if dtype is None else jnp.dtype(dtype)
  return x_kb.reshape(-1)[: w.size].reshape(w.shape).astype(out_dtype)


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


def quantize_params(params, targets: str = r".*_proj/kernel$", **kw):
  """Replace every 2-D array leaf whose '/'-joined path matches `targets` with NF4.

  `targets` is searched (`re.search`) in paths like "layers_0/attn/q_proj/kernel";
  `kw` goes to `quantize_nf4`. Leaves already quantized are kept as they are.
  """
  try:
    pattern = re.compile(targets)
  except re.error as e:
    raise UserError(f"targets={targets!r} is not a valid regular expression ({e}); "
                    r"use e.g. r'attn/(q|v)_proj/kernel$'.") from None

  def is_target(path: str, leaf) -> bool:
    return (not is_quantized(leaf) and getattr(leaf, "ndim", None) == 2
            and bool(pattern.search(path)))

  leaves = _leaves_with_paths(params)
  if not any(is_target(p, leaf) for p, leaf in leaves):
    paths_2d = [p for p, leaf in leaves if getattr(leaf, "ndim", None) == 2
                and not is_quantized(leaf)]
    done = [p for p, leaf in leaves if is_quantized(leaf) and pattern.search(p)]
    note = f" (already quantized: {', '.join(done)})" if done else ""
    raise UserError(f"targets={targets!r} matches no unquantized 2-D parameter{note}. "
                    f"2-D parameter paths: {', '.join(paths_2d) or '(none)'}. "
                    "Pick a regex that matches some of them.")

  def convert(path, leaf):
    p = _path_str(path)
    return quantize_nf4(leaf, **kw) if is_target(p, leaf) else leaf

  return jax.tree_util.tree_map_with_path(convert, params, is_leaf=is_quantized)


def quantized_bytes_report(params) -> dict:
  """Storage of the NF4 matrices in `params` vs the same matrices in bf16.

  Returns matrices, params (elements), quantized_bytes (codes + all scales),
  code_bytes, scale_overhead_bytes, bf16_bytes, ratio (quantized / bf16) and
  bits_per_param.
  """
  weights = [leaf for _, leaf in _leaves_with_paths(params) if isinstance(leaf, NF4Weight)]
  if not weights:
    raise UserError("quantized_bytes_report found no NF4Weight leaves in params; "
                    "run quantize_params(params, targets=...) first.")
  n = sum(w.size for w in weights)
  total = sum(w.nbytes for w in weights)
  scale = sum(w.scale_nbytes for w in weights)
  bf16 = 2 * n
  return {"matrices": len(weights), "params": n, "quantized_bytes": total,
          "code_bytes": total - scale, "scale_overhead_bytes": scale, "bf16_bytes": bf16,
          "ratio": total / bf16, "bits_per_param": 8 * total / n}


# --------------------------------------------------------------------------- int8
QUANTIZE_CHOICES = ("none", "int8")
INT8_TARGETS = r"_proj/kernel$"
INT8_MATMULS = ("int8_dot", "dequantize")
# Kernels with fewer input rows than this stay in float: the per-channel
# scales and the activation codes would cost more than the weights save.
INT8_MIN_IN = 32


def quantize_int8(w: jax.Array, channel_axis: int = 1, matmul: str = "int8_dot") -> Int8Weight:
  """Symmetric absmax int8 of a 2-D matrix, one scale per `channel_axis` slice."""
  if getattr(w, "ndim", None) != 2 or not jnp.issubdtype(w.dtype, jnp.floating):
    raise UserError(f"quantize_int8 takes a 2-D float matrix, got "
                    f"{getattr(w, 'shape', type(w).__name__)} {getattr(w, 'dtype', '')}; "
                    "pass the float weights, not already-quantized ones.")
  if matmul not in INT8_MATMULS:
    raise UserError(f"matmul={matmul!r}: expected one of {', '.join(INT8_MATMULS)}.")
  w32 = w.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w32), axis=1 - channel_axis)
  scale = jnp.where(absmax > 0, absmax, 1.0) / _INT8_MAX
  expanded = scale[:, None] if channel_axis == 0 else scale[None, :]
  q = jnp.clip(jnp.round(w32 / expanded), -_INT8_MAX, _INT8_MAX).astype(jnp.int8)
  if channel_axis == 0:
    q = q.T          # stored [D, V]: the head's x @ E^T is then a plain [in, out] matmul
  return Int8Weight(q=q, scale=scale.astype(jnp.float32), channel_axis=channel_axis,
                    dtype_name=jnp.dtype(w.dtype).name, matmul=matmul)


def quantize_int8_params(params, targets: str = INT8_TARGETS, embeddings: bool = True,
                         matmul: str = "int8_dot", log=None):
  """`params` with every float 2-D leaf whose path matches `targets` as an Int8Weight.

  embeddings=True (the default) also quantizes the embedding `embed` (per-row
  scales: they serve the lookup and, when tied, the output head) and an untied
  `lm_head/kernel`: in a small model the head is a large share of the bytes a
  decode step reads.
  Kernels with fewer than INT8_MIN_IN input rows stay in float; `log` (default:
  a warning) hears how many, and `int8_report` lists them. An NF4 tree is refused:
  quantize the float checkpoint instead.
  """
  leaves = _leaves_with_paths(params)
  nf4 = [p for p, leaf in leaves if isinstance(leaf, NF4Weight)]
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
  """`model` transformed for `quantize` (one of QUANTIZE_CHOICES; None = "none").

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
    return dataclasses.replace(model, params=quantize_int8_params(model.params, log=log),
                               meta={**getattr(model, "meta", {}), "quantize": value})
  return quantize_int8_params(model, log=log)
