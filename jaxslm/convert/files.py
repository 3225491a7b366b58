"""Hugging Face model directories on disk: config.json and safetensors.

    hf = read_config("models/SmolLM2-135M")            # dict; clear error without one
    with SafetensorsReader("models/SmolLM2-135M") as r:   # model.safetensors or sharded
      for key in r.keys(): x = r.get(key)              # one tensor at a time, memory-mapped
    write_safetensors(out_dir, tensors_iter, sizes, max_shard_bytes=2**31)

Reading goes through `safetensors.safe_open` (framework "flax": bf16 works
without torch), one tensor at a time, so converting never holds more than the
output tree plus one tensor. Writing takes tensors lazily and writes a shard
as soon as it is full (`model-00001-of-00002.safetensors` + the index
transformers reads), so the extra memory is at most one shard.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable

from jaxslm.errors import UserError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_config(hf_dir: str) -> dict:
  hf_dir = os.path.abspath(os.path.expanduser(hf_dir))
  if not os.path.isdir(hf_dir):
    raise UserError(f"Hugging Face model directory {hf_dir!r} does not exist; give the "
                    "directory that holds config.json and *.safetensors.")
  path = os.path.join(hf_dir, CONFIG)
  if not os.path.isfile(path):
    raise UserError(f"{hf_dir!r} has no config.json, so its architecture is unknown; give a "
                    "directory saved with save_pretrained (config.json + *.safetensors), "
                    "e.g. a snapshot from huggingface-cli download.")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON ({e}).") from e


def read_json(path: str) -> dict | None:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def weight_files(hf_dir: str) -> tuple[list[str], dict[str, str] | None]:
  """(safetensors files, {tensor name: file} from the index or None)."""
  index = read_json(os.path.join(hf_dir, INDEX))
  if index is not None:
    weight_map = {k: os.path.join(hf_dir, f) for k, f in (index.get("weight_map") or {}).items()}
    files = sorted(set(weight_map.values()))
    absent = [os.path.basename(f) for f in files if not os.path.isfile(f)]
    if absent:
      raise UserError(f"{INDEX} in {hf_dir!r} names shards that are not there: {absent}; "
                      "download every shard.")
    return files, weight_map
  names = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
  if SINGLE in names:
    names = [SINGLE]
  if not names:
    other = [f for f in os.listdir(hf_dir) if f.endswith((".bin", ".pt", ".pth", ".h5"))]
    hint = (f" It has {other}: load it with transformers and re-save with "
            "save_pretrained(dir) (safetensors is the default).") if other else ""
    raise UserError(f"{hf_dir!r} has no *.safetensors weights.{hint}")
  return [os.path.join(hf_dir, f) for f in names], None


class SafetensorsReader(contextlib.AbstractContextManager):
  """Every tensor of a model directory by name, read lazily from its file."""

  def __init__(self, hf_dir: str):
    from safetensors import safe_open
    files, weight_map = weight_files(hf_dir)
    self._stack = contextlib.ExitStack()
    self._handles = {f: self._stack.enter_context(safe_open(f, framework="flax"))
                     for f in files}
    self._where = {k: f for f, h in self._handles.items() for k in h.keys()
                   if weight_map is None or weight_map.get(k) == f}

  def keys(self) -> list[str]:
    return list(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._handles[self._where[key]].get_slice(key).get_shape())

  def get(self, key: str):
    """The tensor as a jax array (its bytes are read now, nothing else's)."""
    return self._handles[self._where[key]].get_tensor(key)

  def __exit__(self, *exc):
    self._stack.close()
    return None


def plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
  """Consecutive names grouped into shards of at most `max_shard_bytes`
  (a single larger tensor gets a shard of its own)."""
  shards, current, used = [], [], 0
  for name, size in sizes:
    if current and used + size > max_shard_bytes:
      shards.append(current)
      current, used = [], 0
    current.append(name)
    used += size
  if current:
    shards.append(current)
  return shards


def write_safetensors(out_dir: str, tensors: Iterable[tuple[str, object]],
                      sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[str]:
  """Write `tensors` (name, jax/numpy array), produced lazily in the order of
  `sizes`, as one `model.safetensors` or as shards plus the index."""
  from safetensors.flax import save_file
  shards = plan_shards(sizes, max_shard_bytes)
  n = len(shards)
  names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
  shard_of = {name: i for i, shard in enumerate(shards) for name in shard}
  weight_map, pending, current = {}, {}, 0
  for key, value in tensors:
    if shard_of[key] != current:
      raise AssertionError(f"tensor {key} arrived out of the planned order")
    pending[key] = value
    weight_map[key] = names[current]
    if len(pending) == len(shards[current]):
      save_file(pending, os.path.join(out_dir, names[current]), metadata={"format": "pt"})
      pending, current = {}, current + 1
  if n > 1:
    total = sum(size for _, size in sizes)
    with open(os.path.join(out_dir, INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return names


def write_json(path: str, obj: dict) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
