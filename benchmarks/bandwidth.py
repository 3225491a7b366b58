"""The memory-bandwidth bound of a decode step: how many bytes it must read, and how fast.

A decode step at small batch reads every weight once (and each row's KV cache
so far); it cannot finish sooner than those bytes take at the memory's read
bandwidth. `bound_fraction` = (bytes / bandwidth) / measured step time: 1.0
is the hardware's limit.

Bandwidth: on a GPU the vendor's spec (H100 SXM 3.35 TB/s, H200 4.8 TB/s);
elsewhere measured here: the median time of a jitted float32 sum over an
array far larger than the caches (512 MiB by default).
"""

from __future__ import annotations

import statistics
import time

SPEC_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12}   # SXM parts, HBM3e / HBM3


def measure_read_bandwidth(mib: int = 512, repeats: int = 10) -> float:
  """Bytes/s of a streaming read under jit (a float32 sum over `mib` MiB)."""
  import jax
  import jax.numpy as jnp
  n = mib * 2**20 // 4
  x = jnp.ones((n,), jnp.float32) * 0.5
  total = jax.jit(jnp.sum)
  total(x).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    total(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  del x
  return 4 * n / statistics.median(times)


def device_bandwidth(mib: int = 512) -> tuple[float, str]:
  """(bytes/s, where the number comes from) for the default JAX device."""
  import jax
  kind = jax.devices()[0].device_kind
  for name, bw in SPEC_BYTES_PER_S.items():
    if name.lower() in kind.lower():
      return bw, f"{name} spec"
  return measure_read_bandwidth(mib), f"measured: jit float32 sum over {mib} MiB"


def _nbytes(leaf) -> int:
  if hasattr(leaf, "nbytes") and not hasattr(leaf, "__array__"):
    return int(leaf.nbytes)                            # a quantized kernel (all its arrays)
  return int(leaf.size) * leaf.dtype.itemsize


def step_bytes(params, cfg, batch: int, context: float) -> dict:
  """Bytes one decode step reads: every matrix once, except an untied embedding,
  of which only `batch` rows are looked up; plus the K and V of `context` slots
  per row in the cache's dtype (the compute dtype)."""
  import jax
  import jax.numpy as jnp
  from jaxslm import ops
  from jaxslm.sampling.engine import compute_params
  leaves = jax.tree_util.tree_flatten_with_path(compute_params(params, cfg),
                                                is_leaf=ops.is_quantized)[0]
  weights = 0
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    if "'embed'" in name and not cfg.tie_embeddings:
      weights += batch * _nbytes(leaf) // cfg.vocab_size
    else:
      weights += _nbytes(leaf)
  kv = (2 * cfg.n_layers * batch * cfg.num_kv_heads * cfg.dim_per_head * context
        * jnp.dtype(cfg.dtype).itemsize)
  return {"weight_bytes": weights, "kv_bytes": int(kv), "total_bytes": int(weights + kv)}
