"""LoRA adapters on disk, apart from any model: `save_adapters`, `load_adapters`.

    lora.save_adapters("runs/sft/adapters", params, {"base": "runs/default"})
    params = lora.load_adapters("runs/sft/adapters", jaxslm.load("runs/default").params)

The directory is a params-only checkpoint (`jaxslm.checkpoint.save_params`:
atomic, never overwrites) holding the adapter arrays and a "lora" record: the
format, a fingerprint of the base, and per kernel its shape, ranks, scales and
dropout, so loading onto another base fails with the path and both shapes.
Re-exported by `jaxslm.lora`.
"""

from __future__ import annotations

import hashlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm import paths
from jaxslm.errors import UserError
from jaxslm.lora.tree import (FORMAT, LoraWeight, _append, _list_paths, flatten_paths, nest_paths,
                              is_quantized, map_with_paths, strip)


def adapter_fingerprint(base_params) -> str:
  """A short hash identifying a base model: every path and logical shape,
  plus the first 8 values (rounded to bfloat16, so a float32 and a bfloat16
  copy agree) of every leaf that is not a `*/kernel` — kernels may be
  quantized (QLoRA) and still be the same base. Adapters are ignored."""
  h = hashlib.sha256()
  for path, x in sorted(flatten_paths(strip(base_params)).items()):
    h.update(f"{path}:{tuple(x.shape)};".encode())
    if path.rsplit("/", 1)[-1] != "kernel" and not is_quantized(x):
      head = jnp.asarray(x).reshape(-1)[:8].astype(jnp.bfloat16).astype(jnp.float32)
      h.update(np.asarray(head).tobytes())
  return h.hexdigest()[:16]


def save_adapters(directory: str, params, meta: dict | None = None) -> str:
  """Write only the adapters, as a params-only checkpoint (`jaxslm.checkpoint.
  save_params`: atomic, never overwrites): `params/` holds the adapter arrays
  (slots as in `split`), `meta/` your `meta` (base checkpoint path, ...) plus
  a "lora" record: format, base fingerprint, targets and per kernel the base
  shape/dtype, ranks, scales, dropout and adapter dtypes."""
  from jaxslm import checkpoint
  meta = dict(meta or {})
  if "lora" in meta:
    raise UserError("save_adapters: meta key 'lora' is reserved for the adapter record; rename it.")
  wrapped = {p: x for p, x in flatten_paths(params).items() if isinstance(x, LoraWeight)}
  if not wrapped:
    raise UserError("save_adapters: the tree has no LoRA adapters (call lora.add_adapter first).")
  record = {p: {"base_shape": list(x.shape), "base_dtype": str(getattr(x.w, "dtype", "")),
                "base_quantized": is_quantized(x.w), "ranks": list(x.ranks),
                "scales": list(x.scales), "dropout": x.dropout,
                "dtypes": [str(a.dtype) for a in x.a]} for p, x in wrapped.items()}
  meta["lora"] = {"format": FORMAT, "base_fingerprint": adapter_fingerprint(params),
                  "targets": sorted(wrapped), "adapters": record}
  arrays = {f"{p}/{ab}{i}": v for p, x in wrapped.items()
            for ab, vs in (("a", x.a), ("b", x.b)) for i, v in enumerate(vs)}
  return checkpoint.save_params(directory, nest_paths(arrays), meta)


def read_adapter_meta(directory: str) -> dict:
  """The meta `save_adapters` wrote (yours plus the "lora" record)."""
  from jaxslm import checkpoint
  directory = paths.resolve(directory)
  if not paths.isdir(paths.join(directory, "meta")):
    raise UserError(f"{directory!r} is not an adapter directory (no meta/); pass a directory "
                    f"written by lora.save_adapters.")
  meta = checkpoint.read_step_meta(directory)
  if meta.get("lora", {}).get("format") != FORMAT:
    raise UserError(f"{directory!r} holds no LoRA adapters of format {FORMAT!r} (meta has "
                    f"{sorted(meta)}); pass a directory written by lora.save_adapters.")
  return meta


def load_adapters(directory: str, base_params, *, strict: bool = False):
  """`base_params` with the saved adapters wrapped around their kernels
  (appended after any adapters already there). A kernel missing or of
  another shape than recorded is a UserError; another base fingerprint (same
  shapes, other values) warns, or raises with `strict=True`."""
  from jaxslm import checkpoint
  meta = read_adapter_meta(directory)
  rec, flat = meta["lora"], flatten_paths(base_params)
  yours = {k: v for k, v in meta.items() if k != "lora"}
  for p, info in rec["adapters"].items():
    if p not in flat:
      raise UserError(f"Adapter for {p!r} has no kernel in the base parameters; load the base "
                      f"they were trained on ({yours}). Base paths: {_list_paths(base_params)}")
    if tuple(flat[p].shape) != tuple(info["base_shape"]):
      raise UserError(f"Adapter for {p} was trained on a base kernel of shape "
                      f"{tuple(info['base_shape'])}, but this base's is {tuple(flat[p].shape)}; "
                      f"load the base the adapters belong to ({yours}).")
  fingerprint = adapter_fingerprint(base_params)
  if fingerprint != rec["base_fingerprint"]:
    msg = (f"Adapters in {directory!r} were saved with base fingerprint "
           f"{rec['base_fingerprint']}, this base has {fingerprint}: same shapes, other values "
           f"(another or a further-trained base? saved with {yours}).")
    if strict:
      raise UserError(msg + " Load the matching base, or pass strict=False.")
    warnings.warn(msg, stacklevel=2)
  abstract = {}
  for p, info in rec["adapters"].items():
    d_in, d_out = info["base_shape"]
    for i, (r, dt) in enumerate(zip(info["ranks"], info["dtypes"])):
      abstract[f"{p}/a{i}"] = jax.ShapeDtypeStruct((d_in, r), jnp.dtype(dt))
      abstract[f"{p}/b{i}"] = jax.ShapeDtypeStruct((r, d_out), jnp.dtype(dt))
  arrays = flatten_paths(checkpoint.read_step_params(paths.resolve(directory),
                                                     nest_paths(abstract)))

  def one(path, x):
    info = rec["adapters"].get(path)
    if info is None:
      return x
    n = len(info["ranks"])
    return _append(x, [arrays[f"{path}/a{i}"] for i in range(n)],
                   [arrays[f"{path}/b{i}"] for i in range(n)], info["scales"], info["dropout"])
  return map_with_paths(base_params, one)
