"""The projection primitive every layer uses.

All matrix multiplies against parameters go through `dense`, so a
parameter-tree transform (LoRA, NF4 quantization) only needs to teach this
one function about a new kind of leaf; no second model class exists.

    y_bto = dense(x_bti, kernel_io, jnp.bfloat16)                 # plain [in, out] array
    y_bto = dense(x_bti, lora_weight, jnp.bfloat16, dropout_rng=key)  # jaxslm.lora.LoraWeight

Kernel kinds: a plain array; an NF4 kernel (dequantized to the compute
dtype on the fly); an int8 kernel (`jaxslm.quant.Int8Weight`, see
`int8_matmul`); a `jaxslm.lora.LoraWeight` over any of them, computed as
x @ w + sum_i scale_i * (x @ a_i) @ b_i without forming w + a b.
`embed` and `unembed` are the tied embedding's lookup and output head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslm.lora.tree import LoraWeight, dequantize, is_quantized

__all__ = ["dense", "is_quantized", "is_wrapped_kernel", "int8_matmul", "embed", "unembed"]


def is_wrapped_kernel(leaf) -> bool:
  """A kernel that is a pytree of several arrays (LoRA-wrapped or quantized)."""
  return isinstance(leaf, LoraWeight) or is_quantized(leaf)


def dense(x_bti: jax.Array, kernel_io, dtype, bias_o=None, out_dtype=None,
          dropout_rng: jax.Array | None = None) -> jax.Array:
  """y = x @ W (+ b): inputs cast to `dtype`, accumulated/returned in `out_dtype`.

  With a LoraWeight and a `dropout_rng`, inverted dropout at the kernel's
  rate is applied to the input of its last adapter only (the base path and
  earlier adapters see x unchanged). Without a key, no dropout.
  """
  lora_w = kernel_io if isinstance(kernel_io, LoraWeight) else None
  x_bti = x_bti.astype(dtype)
  base = kernel_io if lora_w is None else lora_w.w
  if _is_int8(base):
    y = int8_matmul(x_bti, base, out_dtype or dtype)
  else:
    y = jnp.einsum("...i,io->...o", x_bti, dequantize(base, dtype),
                   preferred_element_type=out_dtype)
  if lora_w is not None and lora_w.a:
    y = y + _adapters(x_bti, lora_w, dtype, out_dtype, dropout_rng)
  if bias_o is not None:
    y = y + bias_o.astype(dtype)
  return y


def _adapters(x_bti, lora_w: LoraWeight, dtype, out_dtype, dropout_rng):
  """sum_i scale_i * (x @ a_i) @ b_i, the last adapter's input dropped out."""
  total = None
  last = len(lora_w.a) - 1
  for i, (a_ir, b_ro, scale) in enumerate(zip(lora_w.a, lora_w.b, lora_w.scales)):
    xi_bti = x_bti
    if i == last and dropout_rng is not None and lora_w.dropout > 0:
      keep = 1.0 - lora_w.dropout
      mask = jax.random.bernoulli(dropout_rng, keep, x_bti.shape)
      xi_bti = jnp.where(mask, x_bti / jnp.asarray(keep, dtype), jnp.zeros((), dtype))
    h_btr = jnp.einsum("...i,ir->...r", xi_bti, a_ir.astype(dtype)) * jnp.asarray(scale, dtype)
    d_bto = jnp.einsum("...r,ro->...o", h_btr, b_ro.astype(dtype), preferred_element_type=out_dtype)
    total = d_bto if total is None else total + d_bto
  return total


def _is_int8(leaf) -> bool:
  return type(leaf).__name__ == "Int8Weight" and is_quantized(leaf)


def int8_matmul(x_bti: jax.Array, w, out_dtype) -> jax.Array:
  """x @ q * s_o for an Int8Weight (q [in, out]; for a tied embedding [V, D],
  stored as q [D, V], this is the head x @ E^T), scales s_o on the output channels.

  "int8_dot": each token's activations become int8 codes with their own
  absmax scale s_bt, and y = (xq @ q in int32) * s_bt * s_o; the faster form on
  XLA:CPU (which converts q to int32 first: BENCHMARKS.md, "int8"), native
  int8 GEMMs on GPUs. "dequantize": y = (x @ q in the compute dtype) * s_o,
  activations exact.
  """
  contract = (((x_bti.ndim - 1,), (0,)), ((), ()))
  if w.matmul == "dequantize":
    y = jax.lax.dot_general(x_bti, w.q.astype(x_bti.dtype), contract,
                            preferred_element_type=jnp.float32)
    return (y * w.scale).astype(out_dtype)
  x32 = x_bti.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(x32), axis=-1, keepdims=True)
  s_bt1 = jnp.where(absmax > 0, absmax, 1.0) / 127.0
  xq = jnp.clip(jnp.round(x32 / s_bt1), -127, 127).astype(jnp.int8)
  acc = jax.lax.dot_general(xq, w.q, contract, preferred_element_type=jnp.int32)
  return (acc.astype(jnp.float32) * s_bt1 * w.scale).astype(out_dtype)


def embed(embedding_vd, tokens_bt: jax.Array) -> jax.Array:
  """Rows of the embedding for `tokens_bt` (an Int8Weight's rows times their scales)."""
  if _is_int8(embedding_vd):
    cols_dbt = jnp.take(embedding_vd.q, tokens_bt, axis=1).astype(jnp.float32)   # q is [D, V]
    rows = jnp.moveaxis(cols_dbt, 0, -1) * jnp.take(embedding_vd.scale, tokens_bt)[..., None]
    return rows.astype(embedding_vd.dtype)
  return jnp.take(embedding_vd, tokens_bt, axis=0)


def unembed(x_btd: jax.Array, embedding_vd, dtype) -> jax.Array:
  """float32 logits x @ E^T of the tied head (an Int8Weight: per-row scales)."""
  if _is_int8(embedding_vd):
    return int8_matmul(x_btd.astype(dtype), embedding_vd, jnp.float32)
  return jnp.einsum("btd,vd->btv", x_btd, jnp.asarray(embedding_vd).astype(dtype),
                    preferred_element_type=jnp.float32)
