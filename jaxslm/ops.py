"""The projection primitive every layer uses.

All matrix multiplies against parameters go through `dense`, so a
parameter-tree transform (LoRA, NF4 quantization) only needs to teach this
one function about a new kind of leaf; no second model class exists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense(x_bti: jax.Array, kernel_io, dtype, bias_o=None, out_dtype=None) -> jax.Array:
  """y = x @ W (+ b): inputs cast to `dtype`, accumulated/returned in `out_dtype`."""
  y = jnp.einsum("...i,io->...o", x_bti.astype(dtype), jnp.asarray(kernel_io).astype(dtype),
                 preferred_element_type=out_dtype)
  if bias_o is not None:
    y = y + bias_o.astype(dtype)
  return y
