"""The projection primitive every layer uses.

All matrix multiplies against parameters go through `dense`, so a
parameter-tree transform (LoRA, NF4 quantization) only needs to teach this
one function about a new kind of leaf; no second model class exists.

    y_bto = dense(x_bti, kernel_io, jnp.bfloat16)                 # plain [in, out] array
    y_bto = dense(x_bti, lora_weight, jnp.bfloat16, dropout_rng=key)  # jaxslm.lora.LoraWeight

Kernel kinds: a plain array; a `jaxslm.quant` kernel (dequantized to the
compute dtype on the fly); a `jaxslm.lora.LoraWeight` over either, computed
as x @ w + sum_i scale_i * (x @ a_i) @ b_i without forming w + a b.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxslm.lora.tree import LoraWeight, dequantize, is_quantized

__all__ = ["dense", "is_quantized", "is_wrapped_kernel"]


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
  base_io = dequantize(kernel_io if lora_w is None else lora_w.w, dtype)
  y = jnp.einsum("...i,io->...o", x_bti, base_io, preferred_element_type=out_dtype)
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
