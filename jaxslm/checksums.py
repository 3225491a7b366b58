"""Checksums of the arrays in a checkpoint, stored in its `meta` item.

At save, every leaf of `params` and `opt_state` gets a record of its shape,
dtype and the 64-bit XXH3 hash (`xxhash.xxh3_64`) of its bytes in C order;
the rest of `meta` gets one hash of its canonical JSON. Orbax writes `meta` in
the same commit as the arrays, so a finished step always carries the
checksums of exactly the values it holds. At restore, the values Orbax hands
back are hashed again and compared: a flipped byte, a cut file or a file from
another step cannot come back as silently wrong weights.

The hash is of the global (logical) value of each array, so it does not
depend on how the array was sharded when saved or is sharded when restored.
A process can hash a leaf only when it holds the whole value: every leaf in a
single-process run (any number of devices), and replicated leaves in a
multi-process run. A leaf sharded across processes (FSDP over hosts) is
recorded with no hash and is not checked; `unchecked` counts them.

Leaves are named by their path with `/` between keys (`0/mu/embed`), the same
for a dict, a named tuple's field or a list index, so a tree restored without
its original container types still matches its record.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
import xxhash

ALGORITHM = "xxh3_64"
KEY = "checksums"          # the meta key holding the record
ARRAY_ITEMS = ("params", "opt_state")


def leaf_name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def flatten(tree) -> dict[str, Any]:
  return {leaf_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def host_value(x) -> np.ndarray | None:
  """The whole value of `x` on the host, or None when this process does not
  hold all of it (an array sharded across processes)."""
  if isinstance(x, jax.Array):
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return None
  return np.asarray(x)


def digest(a: np.ndarray) -> str:
  a = np.ascontiguousarray(a)
  return xxhash.xxh3_64_hexdigest(a.reshape(-1).view(np.uint8))


def describe(x) -> dict[str, Any]:
  """The record of one leaf: shape, dtype and hash (None if not computable here)."""
  value = host_value(x)
  return {"shape": list(np.shape(x)), "dtype": str(np.dtype(x.dtype)),
          ALGORITHM: None if value is None else digest(value)}


def meta_digest(meta: dict[str, Any]) -> str:
  """Hash of `meta` (without its checksums) as JSON with sorted keys, computed on
  the JSON round trip so the value read back hashes the same."""
  body = {k: v for k, v in meta.items() if k != KEY}
  canonical = json.dumps(json.loads(json.dumps(body)), sort_keys=True, separators=(",", ":"))
  return xxhash.xxh3_64_hexdigest(canonical.encode())


def record(items: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
  """What `meta[KEY]` holds for a step saving the array trees `items`."""
  out: dict[str, Any] = {"algorithm": ALGORITHM, "meta": meta_digest(meta)}
  for name, tree in items.items():
    out[name] = {k: describe(x) for k, x in flatten(tree).items()}
  return out


def check_meta(meta: dict[str, Any]) -> str | None:
  """A problem with `meta` itself (its hash or the record's form), or None."""
  rec = meta.get(KEY)
  if not isinstance(rec, dict) or rec.get("algorithm") != ALGORITHM:
    return f"its checksum record is not one this version reads ({str(rec)[:80]!r})"
  if rec.get("meta") != meta_digest(meta):
    return "its meta (config, step, tokenizer) does not match its checksum"
  return None


def check_tree(item: str, rec: dict[str, Any], tree) -> tuple[str | None, int]:
  """Compare the restored `tree` of `item` with its record.

  Returns (problem or None, number of leaves that could not be hashed here).
  A leaf the record lacks, a leaf missing from the tree, another shape or
  dtype, or another hash is a problem; the first few are named.
  """
  leaves = flatten(tree)
  bad, unchecked = [], 0
  for name in sorted(set(rec) - set(leaves)):
    bad.append(f"{item}/{name} is missing")
  for name in sorted(set(leaves) - set(rec)):
    bad.append(f"{item}/{name} is not in the checksum record")
  for name in sorted(set(rec) & set(leaves)):
    want, x = rec[name], leaves[name]
    shape, dtype = list(np.shape(x)), str(np.dtype(x.dtype))
    if not isinstance(want, dict):
      bad.append(f"{item}/{name} has no valid checksum record")
      continue
    if want.get("shape") != shape or want.get("dtype") != dtype:
      bad.append(f"{item}/{name} is {dtype}{shape}, saved as {want.get('dtype')}{want.get('shape')}")
      continue
    if want.get(ALGORITHM) is None:
      unchecked += 1
      continue
    value = host_value(x)
    if value is None:
      unchecked += 1
    elif digest(value) != want[ALGORITHM]:
      bad.append(f"{item}/{name} does not match its checksum")
  if not bad:
    return None, unchecked
  more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
  return "; ".join(bad[:3]) + more, unchecked
