"""QLoRA's NormalFloat-4 weights as a parameter-tree transform.

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

The example in `jaxslm.quant`'s docstring shows the calls.
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxslm.errors import UserError
from jaxslm.quant.base import INT8_MAX, _QuantizedMatrix, _leaves_with_paths, _path_str, \
    is_quantized


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
  codes_gs = jnp.clip(jnp.round(dev_gs / safe_g[:, None] * INT8_MAX), -INT8_MAX, INT8_MAX)
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
  scales = codes_gs * (w.scale_scales_s[:, None] / INT8_MAX) + w.scale_offset
  # A scale is an absmax: never negative (clamping only moves it closer).
  return jnp.maximum(scales.reshape(-1)[: w.n_blocks], 0.0)


def _unpack_codes(w: NF4Weight) -> jax.Array:
  """uint8[n_pad] codebook indices from the packed nibbles."""
  return jnp.stack([w.codes_n >> 4, w.codes_n & 0xF], axis=-1).reshape(-1)


def dequantize_nf4(w: NF4Weight, dtype: Any = None) -> jax.Array:
  """The [in, out] kernel in `dtype` (default: the weight's original dtype).

  Cheap enough for every forward: a 16-entry gather and a multiply by the
  block scale, computed in float32 and cast once.
  """
  values_kb = jnp.asarray(NF4_CODEBOOK)[_unpack_codes(w)].reshape(-1, w.block_size)
  x_kb = values_kb * block_scales(w)[:, None]
  out_dtype = w.dtype if dtype is None else jnp.dtype(dtype)
  return x_kb.reshape(-1)[: w.size].reshape(w.shape).astype(out_dtype)


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

