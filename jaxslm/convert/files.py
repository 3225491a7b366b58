"""Hugging Face model directories on disk: config.json and safetensors.

    hf = read_config("models/SmolLM2-135M")            # dict; clear error without one
    with SafetensorsReader("models/SmolLM2-135M") as r:   # model.safetensors or sharded
      for key in r.keys(): x = r.get(key)              # one tensor at a time, memory-mapped
    plan = plan_files(specs, max_shard_bytes=2**31)    # [(file name, its TensorSpecs)]
    write_planned(out_dir, plan, tensors_iter)         # streamed, tensor by tensor

Reading maps each tensor's bytes on its own (`numpy.memmap`, bf16 through
ml_dtypes, no torch): pages are read when touched and unmapped when the
array is dropped, so a converter that copies what it keeps holds the output
plus one tensor, never the file as well. Writing streams: a file's header is
written from the specs first, then each tensor as it is produced, so the
writer holds no tensor after writing it (no shard is gathered in memory).
The bytes are those `safetensors.numpy.save_file` writes (tensors ordered by
dtype then name, the header padded to 8 bytes); sharded models get
`model-00001-of-00002.safetensors` names and the index transformers reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterable

import ml_dtypes
import numpy as np

from jaxslm.errors import UserError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# safetensors dtype codes in the order of its Dtype enum: a file stores its
# tensors by dtype, this order reversed, then by name.
_CODES = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
          "F32", "F64", "I64", "U64")
_NUMPY = dict(zip(_CODES, map(np.dtype, (
    np.bool_, np.uint8, np.int8, ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fn, np.int16,
    np.uint16, np.float16, ml_dtypes.bfloat16, np.int32, np.uint32, np.float32, np.float64,
    np.int64, np.uint64))))
_CODE = {dt: code for code, dt in _NUMPY.items()}


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


def read_header(path: str) -> tuple[int, dict]:
  """(offset of the data, {tensor name: {dtype, shape, data_offsets}}) of a safetensors file."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    if not 2 <= size <= min(os.path.getsize(path) - 8, 100 << 20):
      raise UserError(f"{path} is not a safetensors file (header length {size}); re-save it "
                      "with save_pretrained or download it again.")
    try:
      header = json.loads(f.read(size))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise UserError(f"{path} has a corrupt safetensors header ({e}); download it again.") from e
  header.pop("__metadata__", None)
  return 8 + size, header


class SafetensorsReader(contextlib.AbstractContextManager):
  """Every tensor of a model directory by name, mapped lazily from its file."""

  def __init__(self, hf_dir: str):
    files, weight_map = weight_files(hf_dir)
    self._where = {}
    for f in files:
      start, header = read_header(f)
      self._where.update({k: (f, start, info) for k, info in header.items()
                          if weight_map is None or weight_map.get(k) == f})

  def keys(self) -> list[str]:
    return list(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._where[key][2]["shape"])

  def get(self, key: str) -> np.ndarray:
    """The tensor as a read-only numpy array mapped from its file: its bytes
    are read when touched, and the mapping (its pages too) goes when the
    array and every view of it are dropped. Copy what you keep."""
    path, start, info = self._where[key]
    code, shape = info["dtype"], tuple(info["shape"])
    if code not in _NUMPY:
      raise UserError(f"Tensor {key!r} in {path} has dtype {code}, which jaxslm cannot read; "
                      f"supported: {', '.join(_CODES)}. Re-save the model in float32 or bfloat16.")
    dtype = _NUMPY[code]
    begin, end = info["data_offsets"]
    if end - begin != math.prod(shape) * dtype.itemsize:
      raise UserError(f"Tensor {key!r} in {path} is corrupt: {end - begin} bytes for shape "
                      f"{shape} of {code}; download the file again.")
    if begin == end:
      return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)

  def __exit__(self, *exc):
    return None


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
  """Consecutive names (any hashable keys) grouped into shards of at most
  `max_shard_bytes` (a single larger item gets a shard of its own)."""
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


def file_order(specs: list[TensorSpec]) -> list[TensorSpec]:
  """The order safetensors stores tensors in: by dtype (its enum, reversed), then name."""
  return sorted(specs, key=lambda s: (-_CODES.index(_code(s)), s.name))


def plan_files(specs: list[TensorSpec], max_shard_bytes: int) -> list[tuple[str, list[TensorSpec]]]:
  """[(file name, its tensors in file order)]: `specs` (in the order a model
  lists them) grouped by `plan_shards`; one file is `model.safetensors`."""
  by_name = {s.name: s for s in specs}
  shards = plan_shards([(s.name, s.nbytes) for s in specs], max_shard_bytes)
  return [(name, file_order([by_name[k] for k in shard]))
          for name, shard in zip(_file_names(len(shards)), shards)]


def write_file(path: str, specs: list[TensorSpec], tensors: Iterable, metadata=None) -> None:
  """Stream one safetensors file: the header from `specs` (in file order),
  then each of `tensors` (numpy or jax arrays, produced lazily in the order
  of `specs`) as it comes. Nothing is kept after it is written."""
  header, offset = {}, 0
  if metadata is not None:
    header["__metadata__"] = metadata
  for s in specs:
    header[s.name] = {"dtype": _code(s), "shape": list(s.shape),
                      "data_offsets": [offset, offset + s.nbytes]}
    offset += s.nbytes
  text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
  text += b" " * (-len(text) % 8)
  it = iter(tensors)
  with open(path, "wb") as f:
    f.write(len(text).to_bytes(8, "little") + text)
    for s in specs:
      x = np.asarray(next(it))
      if x.shape != s.shape or x.dtype != s.dtype:
        raise AssertionError(f"tensor {s.name} is {x.dtype}{list(x.shape)}, planned as "
                             f"{s.dtype}{list(s.shape)}")
      f.write(np.ascontiguousarray(x).reshape(-1).view(np.uint8))
      del x
  if next(it, None) is not None:
    raise AssertionError(f"more tensors than the {len(specs)} planned for {path}")


def write_planned(out_dir: str, plan: list[tuple[str, list[TensorSpec]]], tensors: Iterable,
                  order: list[str] | None = None) -> list[str]:
  """Write the files of `plan_files` from `tensors`, produced lazily in plan
  order (file by file, each in file order), plus the index when sharded
  (its weight_map in `order`, the model's own order; plan order by default)."""
  it = iter(tensors)
  for name, specs in plan:
    write_file(os.path.join(out_dir, name), specs, (next(it) for _ in specs),
               metadata={"format": "pt"})
  _write_index(out_dir, plan, order)
  return [name for name, _ in plan]


def write_safetensors(out_dir: str, tensors: Iterable[tuple[str, object]],
                      sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[str]:
  """Write `tensors` (name, jax/numpy array), produced lazily in the order of
  `sizes`, as one `model.safetensors` or as shards plus the index. A shard's
  tensors are gathered before its header is written (their shapes are not
  known earlier), so this holds up to one shard; `write_planned` holds none."""
  shards = plan_shards(sizes, max_shard_bytes)
  plan, it = [], iter(tensors)
  for name, shard in zip(_file_names(len(shards)), shards):
    pending = {}
    for expected in shard:
      key, value = next(it)
      if key != expected:
        raise AssertionError(f"tensor {key} arrived out of the planned order")
      pending[key] = np.asarray(value)
    specs = file_order([TensorSpec(k, x.shape, x.dtype) for k, x in pending.items()])
    write_file(os.path.join(out_dir, name), specs, (pending.pop(s.name) for s in specs),
               metadata={"format": "pt"})
    plan.append((name, specs))
  _write_index(out_dir, plan, [name for name, _ in sizes])
  return [name for name, _ in plan]


def _file_names(n: int) -> list[str]:
  return [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _write_index(out_dir: str, plan: list[tuple[str, list[TensorSpec]]], order) -> None:
  if len(plan) < 2:
    return
  where = {s.name: name for name, specs in plan for s in specs}
  total = sum(s.nbytes for _, specs in plan for s in specs)
  weight_map = {k: where[k] for k in (order or list(where))}
  with open(os.path.join(out_dir, INDEX), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _code(s: TensorSpec) -> str:
  if s.dtype not in _CODE:
    raise UserError(f"Tensor {s.name!r} has dtype {s.dtype}, which safetensors cannot store "
                    f"here; cast it to float32 or bfloat16 first.")
  return _CODE[s.dtype]


def write_json(path: str, obj: dict) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
