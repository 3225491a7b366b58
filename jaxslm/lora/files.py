"""LoRA adapters on disk, apart from any model: `save_adapters`, `load_adapters`.

    lora.save_adapters("runs/sft/adapters", params, {"base": "runs/default"})
    params = lora.load_adapters("runs/sft/adapters", jaxslm.load("runs/default").params)

The directory is a params-only checkpoint (`jaxslm.checkpoint.save_params`:
atomic, never overwrites) holding the adapter arrays and a "lora" record: the
format, a fingerprint of the base, and per kernel its shape, ranks, scales and
dropout, so loading onto another base fails with the path and both shapes.
A directory from elsewhere is checked before anything is sized from it: the
record field by field (ranks no larger than the kernel, known dtypes), then
the stored arrays' shapes against the record, then the arrays themselves;
each problem is a `UserError` naming the directory. Re-exported by `jaxslm.lora`.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm import file_checks, paths
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
  """The meta `save_adapters` wrote (yours plus the "lora" record), its
  record checked: every field of the type and range `save_adapters` writes."""
  from jaxslm import checkpoint
  directory = paths.resolve(directory)
  if not paths.is_remote(directory):
    try:
      os.stat(directory)
    except OSError as e:
      raise UserError(file_checks.os_problem(directory, "adapter directory", e)) from None
  if not paths.isdir(paths.join(directory, "meta")):
    raise UserError(f"{directory!r} is not an adapter directory (no meta/); pass a directory "
                    f"written by lora.save_adapters.")
  try:
    meta = checkpoint.read_step_meta(directory)
  except Exception as e:   # Orbax / JSON errors of a damaged meta/ item
    raise UserError(f"The adapter record {paths.join(directory, 'meta')} cannot be read "
                    f"({type(e).__name__}: {file_checks.brief(e)}); it is damaged. Save the "
                    "adapters again (lora.save_adapters) or restore the directory.") from None
  if not isinstance(meta, dict) or not isinstance(meta.get("lora"), dict) \
          or meta["lora"].get("format") != FORMAT:
    keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
    raise UserError(f"{directory!r} holds no LoRA adapters of format {FORMAT!r} (meta has "
                    f"{keys}); pass a directory written by lora.save_adapters.")
  _check_record(meta["lora"], directory)
  return meta


def _check_record(rec: dict, directory: str) -> None:
  """UserError naming the field when the "lora" record is not what save_adapters writes."""
  def bad(what: str):
    return UserError(f"The adapter record in {directory!r} is damaged: {what}. Save the "
                     "adapters again (lora.save_adapters) or restore the directory.")

  def positive_ints(x, n=None):
    return (isinstance(x, list) and x and (n is None or len(x) == n)
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in x))

  def number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
  adapters = rec.get("adapters")
  if not isinstance(adapters, dict) or not adapters:
    raise bad(f"'adapters' is {_short(adapters)}, expected an object of kernel paths")
  if not isinstance(rec.get("base_fingerprint"), str):
    raise bad(f"base_fingerprint is {_short(rec.get('base_fingerprint'))}, not a string")
  for path, info in adapters.items():
    if not isinstance(info, dict):
      raise bad(f"the entry of {path!r} is {_short(info)}, not an object")
    shape, ranks = info.get("base_shape"), info.get("ranks")
    scales, dtypes, dropout = info.get("scales"), info.get("dtypes"), info.get("dropout")
    if not positive_ints(shape, 2):
      raise bad(f"{path}: base_shape {_short(shape)} is not two positive integers")
    if not positive_ints(ranks) or max(ranks) > min(shape):
      raise bad(f"{path}: ranks {_short(ranks)} are not positive integers of at most "
                f"{min(shape)} (the kernel is {tuple(shape)})")
    if not (isinstance(scales, list) and len(scales) == len(ranks) and all(map(number, scales))):
      raise bad(f"{path}: scales {_short(scales)} are not {len(ranks)} finite numbers")
    if not (isinstance(dtypes, list) and len(dtypes) == len(ranks)
            and all(dt in _ADAPTER_DTYPES for dt in dtypes)):
      raise bad(f"{path}: dtypes {_short(dtypes)} are not {len(ranks)} of {_ADAPTER_DTYPES}")
    if not (number(dropout) and 0 <= dropout < 1):
      raise bad(f"{path}: dropout {_short(dropout)} is not a number in [0, 1)")


_ADAPTER_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _short(x, limit: int = 60) -> str:
  text = repr(x)
  return text if len(text) <= limit else text[:limit] + "..."


def _describe(shape_dtype) -> str:
  return "nothing" if shape_dtype is None else f"{shape_dtype[1]}{list(shape_dtype[0])}"


def _read_arrays(directory: str, abstract: dict) -> dict:
  """The adapter arrays, after their stored shapes and dtypes are checked
  against the record (so a damaged record never sizes a restore)."""
  import orbax.checkpoint as ocp

  from jaxslm import checkpoint
  where = paths.join(directory, "params")
  try:
    stored = ocp.StandardCheckpointer().metadata(where).item_metadata.tree
  except Exception as e:   # Orbax errors of a damaged or missing params/ item
    raise UserError(f"The adapter arrays {where} cannot be read ({type(e).__name__}: "
                    f"{file_checks.brief(e)}); they are damaged or missing. Save the adapters "
                    "again or restore the directory.") from None
  stored = {p: (tuple(m.shape), str(m.dtype)) for p, m in flatten_paths(stored).items()
            if hasattr(m, "shape")}
  want = {p: (tuple(x.shape), str(x.dtype)) for p, x in abstract.items()}
  if stored != want:
    diff = sorted(p for p in set(stored) | set(want) if stored.get(p) != want.get(p))
    raise UserError(f"The adapter arrays in {where} do not match the adapter record: "
                    + "; ".join(f"{p}: stored {_describe(stored.get(p))}, recorded "
                                f"{_describe(want.get(p))}" for p in diff[:4])
                    + ". The directory is damaged or mixed from two saves; save it again.")
  try:
    return flatten_paths(checkpoint.read_step_params(directory, nest_paths(abstract)))
  except Exception as e:   # Orbax / TensorStore errors of damaged array chunks
    raise UserError(f"The adapter arrays {where} cannot be read ({type(e).__name__}: "
                    f"{file_checks.brief(e)}); they are damaged. Save the adapters again or "
                    "restore the directory.") from None


def load_adapters(directory: str, base_params, *, strict: bool = False):
  """`base_params` with the saved adapters wrapped around their kernels
  (appended after any adapters already there). A kernel missing or of
  another shape than recorded is a UserError; another base fingerprint (same
  shapes, other values) warns, or raises with `strict=True`."""
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
  arrays = _read_arrays(paths.resolve(directory), abstract)

  def one(path, x):
    info = rec["adapters"].get(path)
    if info is None:
      return x
    n = len(info["ranks"])
    return _append(x, [arrays[f"{path}/a{i}"] for i in range(n)],
                   [arrays[f"{path}/b{i}"] for i in range(n)], info["scales"], info["dropout"])
  return map_with_paths(base_params, one)
