"""Hugging Face model directories on disk: config.json and safetensors.

    hf = read_config("models/SmolLM2-135M")            # dict; clear error without one
    with SafetensorsReader("models/SmolLM2-135M") as r:   # model.safetensors or sharded
      for key in r.keys(): x = r.get(key)              # one tensor at a time, memory-mapped
    plan = plan_files(specs, max_shard_bytes=2**31)    # [(file name, its TensorSpecs)]
    write_planned(out_dir, plan, tensors_iter)         # streamed, tensor by tensor

Opening a reader validates every file first (`safetensors_header`: lengths,
offsets, dtypes and sizes against the file; a directory, a symbolic link loop
or an unreadable file as weights) and a sharded directory against its index;
any problem is a `UserError` naming the file. Reading then maps each tensor's
bytes on its own (`numpy.memmap`, bf16 through ml_dtypes, no torch): pages
are read when touched and unmapped when the array is dropped, so a converter
that copies what it keeps holds the output plus one tensor, never the file
as well. Writing streams: a file's header is
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
import warnings
from collections.abc import Iterable

import numpy as np

from jaxslm import file_checks
from jaxslm.convert import safetensors_header as header_check
from jaxslm.errors import UserError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# safetensors dtype codes jaxslm reads and writes, in the order of its Dtype
# enum: a file stores its tensors by dtype, this order reversed, then by name.
_CODES = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
          "F32", "F64", "I64", "U64")
_NUMPY = {code: header_check.numpy_dtype(code) for code in _CODES}
_CODE = {dt: code for code, dt in _NUMPY.items()}


def read_config(hf_dir: str) -> dict:
  hf_dir = os.path.abspath(os.path.expanduser(hf_dir))
  try:
    os.stat(hf_dir)
  except OSError as e:
    raise UserError(file_checks.os_problem(hf_dir, "Hugging Face model directory", e)) from None
  if not os.path.isdir(hf_dir):
    raise UserError(f"Hugging Face model directory {hf_dir!r} is a file; give the "
                    "directory that holds config.json and *.safetensors.")
  path = os.path.join(hf_dir, CONFIG)
  if not os.path.lexists(path):
    raise UserError(f"{hf_dir!r} has no config.json, so its architecture is unknown; give a "
                    "directory saved with save_pretrained (config.json + *.safetensors), "
                    "e.g. a snapshot from huggingface-cli download.")
  config = file_checks.read_json_object(path, "config.json")
  if not isinstance(config.get("model_type"), (str, type(None))):
    raise UserError(f"{path}: model_type={config['model_type']!r} is not a string; restore the "
                    "config.json the model was saved with.")
  return config


def read_json(path: str, what: str = "JSON file") -> dict | None:
  """A JSON object file beside the weights, or None when there is none."""
  return file_checks.read_json_object(path, what, missing_ok=True)


def weight_files(hf_dir: str) -> tuple[list[str], dict[str, str] | None]:
  """(safetensors files, {tensor name: file} from the index or None)."""
  index_path = os.path.join(hf_dir, INDEX)
  index = read_json(index_path, INDEX)
  if index is not None:
    weight_map = _weight_map(index, index_path, hf_dir)
    files = sorted(set(weight_map.values()))
    absent = [os.path.basename(f) for f in files if not os.path.lexists(f)]
    if absent:
      raise UserError(f"{INDEX} in {hf_dir!r} names shards that are not there: {absent}; "
                      "download every shard.")
    return files, weight_map
  try:
    listing = os.listdir(hf_dir)
  except OSError as e:
    raise UserError(f"Cannot list the model directory {hf_dir!r} ({e.strerror}); check its "
                    "permissions.") from None
  names = sorted(f for f in listing if f.endswith(".safetensors"))
  if SINGLE in names:
    names = [SINGLE]
  if not names:
    other = [f for f in listing if f.endswith((".bin", ".pt", ".pth", ".h5"))]
    hint = (f" It has {other}: load it with transformers and re-save with "
            "save_pretrained(dir) (safetensors is the default).") if other else ""
    raise UserError(f"{hf_dir!r} has no *.safetensors weights.{hint}")
  return [os.path.join(hf_dir, f) for f in names], None


def _weight_map(index, index_path: str, hf_dir: str) -> dict[str, str]:
  """{tensor: shard path} of an index, each shard a plain file name in `hf_dir`."""
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict) or not weight_map:
    raise UserError(f"{index_path} has no weight_map object of tensor names to shard files; "
                    "download it again, or remove it if model.safetensors is the whole model.")
  out = {}
  for name, shard in weight_map.items():
    if (not isinstance(shard, str) or os.path.basename(shard) != shard
            or shard in ("", ".", "..") or not shard.endswith(".safetensors")):
      raise UserError(f"{index_path} maps {name!r} to {shard!r}, not a *.safetensors file name "
                      "in the same directory; download the index again.")
    out[name] = os.path.join(hf_dir, shard)
  return out


class SafetensorsReader(contextlib.AbstractContextManager):
  """Every tensor of a model directory by name, mapped lazily from its file.

  Opening it reads and validates every header (`safetensors_header`) before
  anything is mapped; a sharded directory must agree with its index (each
  listed tensor in its shard; a shard's tensor left out of the index is named
  in a warning), and a tensor name found in two files is an error."""

  def __init__(self, hf_dir: str):
    files, weight_map = weight_files(hf_dir)
    self._where: dict[str, tuple[str, header_check.TensorInfo]] = {}
    self.headers = {}
    unlisted = []
    for f in files:
      header = header_check.read_header(f)
      self.headers[f] = header
      for k, info in header.tensors.items():
        if weight_map is not None and weight_map.get(k) != f:
          unlisted.append(f"{k} ({os.path.basename(f)})")
          continue
        if k in self._where:
          raise UserError(f"Tensor {k!r} is in both {self._where[k][0]} and {f}; which one "
                          "is meant is ambiguous. Keep one copy of the weights in the directory.")
        self._where[k] = (f, info)
    if weight_map is not None:
      lost = [k for k, f in weight_map.items() if k not in self._where]
      if lost:
        raise UserError(f"{INDEX} in {hf_dir!r} lists tensors their shard does not hold: "
                        f"{_few(lost)}; download the shards (or the index) again.")
      if unlisted:
        warnings.warn(f"{len(unlisted)} tensors in the shards of {hf_dir!r} are not in its "
                      f"{INDEX} and are not read: {_few(unlisted)}.", stacklevel=2)

  def keys(self) -> list[str]:
    return list(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._where[key][1].shape

  def get(self, key: str) -> np.ndarray:
    """The tensor as a read-only numpy array mapped from its file: its bytes
    are read when touched, and the mapping (its pages too) goes when the
    array and every view of it are dropped. Copy what you keep."""
    path, info = self._where[key]
    dtype = header_check.numpy_dtype(info.code)
    if dtype is None:
      raise UserError(f"Tensor {key!r} in {path} has dtype {info.code}, which jaxslm cannot "
                      f"read; supported: {', '.join(_CODES)}. Re-save the model in float32 or "
                      "bfloat16.")
    if info.nbytes == 0:
      return np.zeros(info.shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=info.begin, shape=info.shape)

  def __exit__(self, *exc):
    return None


def _few(names: list[str], limit: int = 8) -> str:
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


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
