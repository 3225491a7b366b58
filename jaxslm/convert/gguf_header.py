"""A bounded reader of a GGUF file's header: metadata and tensor infos, every
count, length and offset checked against the file before it is used.

    header = read_header("models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf")
    header.metadata["llama.block_count"]        # 30
    header.tensors["blk.0.attn_q.weight"]       # TensorInfo(shape=(576, 576), type=3, ...)

A GGUF file is untrusted input: its length fields say how much to read and
how often to loop, so a 49-byte file that claims an array of 2^63 strings can
make a trusting reader (such as `gguf.GGUFReader`) loop or allocate without
end. This module walks the header itself (`struct` over a read-only memory
map, nothing allocated from a length before the length is checked) and
refuses, with a `UserError` naming the file, byte offset and field:

- a wrong magic, a version other than 2 or 3 (or a big-endian file);
- any count or length that the rest of the file cannot hold (a string of
  n bytes needs n bytes, an array of n items at least n times the smallest
  item, a tensor info at least 24 bytes), and truncation anywhere;
- unknown value types, arrays nested deeper than `MAX_ARRAY_DEPTH`, keys or
  strings that are not UTF-8, duplicate keys or tensor names;
- a `general.alignment` that is not a power of two (as a UINT32);
- tensors with 0 or more than 4 dimensions, a zero dimension, an element
  count beyond 2^63 - 1, an unknown tensor type, a row not a whole number of
  quantization blocks, a data offset that is not aligned, or data outside
  the file or overlapping another tensor's.

Only a file that passes is handed to `gguf.GGUFReader` (`gguf_reader.py`).
Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor
count, u64 key/value count, the key/values, the tensor infos (name, u32
n_dims, u64 dims (innermost first), u32 type, u64 offset relative to the
data section), padding to the alignment, the data section.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import mmap
import os
import struct
from typing import Any

import numpy as np

from jaxslm.errors import UserError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 2            # an array of arrays of scalars, no deeper
MAX_KEY_BYTES = 65_535
INT64_MAX = 2**63 - 1

# GGUF value types: (name, struct format or None, size of the smallest item).
STRING, ARRAY = 8, 9
_SCALARS = {0: ("UINT8", "<B", np.uint8), 1: ("INT8", "<b", np.int8),
            2: ("UINT16", "<H", np.uint16), 3: ("INT16", "<h", np.int16),
            4: ("UINT32", "<I", np.uint32), 5: ("INT32", "<i", np.int32),
            6: ("FLOAT32", "<f", np.float32), 7: ("BOOL", "<B", np.uint8),
            10: ("UINT64", "<Q", np.uint64), 11: ("INT64", "<q", np.int64),
            12: ("FLOAT64", "<d", np.float64)}
_TYPE_NAMES = {**{k: v[0] for k, v in _SCALARS.items()}, STRING: "STRING", ARRAY: "ARRAY"}


def _min_size(value_type: int) -> int:
  """Bytes the smallest value of `value_type` takes (an empty string: its length)."""
  if value_type in _SCALARS:
    return struct.calcsize(_SCALARS[value_type][1])
  return 8 if value_type == STRING else 12    # an empty array: item type + count


@functools.lru_cache(maxsize=1)
def quant_sizes() -> dict[int, tuple[int, int]]:
  """{tensor type id: (elements per block, bytes per block)}: the types GGUF knows."""
  import gguf
  return {int(t): (int(b), int(s)) for t, (b, s) in gguf.GGML_QUANT_SIZES.items()}


def type_name(type_id: int) -> str:
  import gguf
  try:
    return gguf.GGMLQuantizationType(type_id).name
  except ValueError:
    return f"type {type_id}"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  dims: tuple[int, ...]      # as the file lists them: innermost (contiguous) first
  type: int                  # a gguf.GGMLQuantizationType value
  offset: int                # absolute byte offset of the data in the file
  nbytes: int

  @property
  def shape(self) -> tuple[int, ...]:
    """The numpy (row-major) shape: dims reversed. A torch Linear [out, in]."""
    return tuple(reversed(self.dims))


@dataclasses.dataclass(frozen=True)
class Header:
  path: str
  version: int
  metadata: dict[str, Any]        # strings, ints, floats, bools, lists (numeric arrays: numpy)
  value_types: dict[str, tuple[int, ...]]   # key -> (type,) or (ARRAY, item type[, ...])
  tensors: dict[str, TensorInfo]  # in file order
  alignment: int
  data_offset: int
  file_size: int


class _Cursor:
  """Reads little-endian fields from `buf`, refusing to step past its end."""

  def __init__(self, buf, path: str):
    self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

  def fail(self, what: str, at: int | None = None):
    raise UserError(f"{self.path}: not a valid GGUF file: {what} (at byte "
                    f"{self.pos if at is None else at} of {self.size}). The file is damaged, "
                    "truncated or not GGUF; download or export it again.")

  def need(self, n: int, what: str) -> None:
    if n < 0 or self.pos + n > self.size:
      self.fail(f"{what} needs {n} bytes but only {self.size - self.pos} remain")

  def scalar(self, fmt: str, what: str):
    n = struct.calcsize(fmt)
    self.need(n, what)
    (v,) = struct.unpack_from(fmt, self.buf, self.pos)
    self.pos += n
    return v

  def u32(self, what: str) -> int:
    return self.scalar("<I", what)

  def u64(self, what: str) -> int:
    return self.scalar("<Q", what)

  def string(self, what: str, limit: int | None = None) -> str:
    start = self.pos
    n = self.u64(f"the length of {what}")
    if limit is not None and n > limit:
      self.fail(f"{what} claims {n} bytes, more than the {limit} allowed", start)
    self.need(n, f"{what} ({n} bytes)")
    raw = bytes(self.buf[self.pos:self.pos + n])
    self.pos += n
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError as e:
      self.fail(f"{what} is not UTF-8 ({e.reason} at byte {e.start})", start + 8 + e.start)

  def count(self, what: str, min_item: int) -> int:
    """A u64 count of items of at least `min_item` bytes each, all of which must fit."""
    start = self.pos
    n = self.u64(what)
    if n * min_item > self.size - self.pos:
      self.fail(f"{what} is {n}, but {n} items of at least {min_item} bytes cannot fit in "
                f"the {self.size - self.pos} bytes left", start)
    return n


def _value(cur: _Cursor, vtype: int, what: str, depth: int = 0):
  """One value of type `vtype` -> (python value, type tuple)."""
  if vtype in _SCALARS:
    _, fmt, _ = _SCALARS[vtype]
    v = cur.scalar(fmt, what)
    return (bool(v) if vtype == 7 else v), (vtype,)
  if vtype == STRING:
    return cur.string(what), (vtype,)
  if vtype != ARRAY:
    cur.fail(f"{what} has value type {vtype}; known types are "
             f"{', '.join(f'{k} ({v})' for k, v in sorted(_TYPE_NAMES.items()))}", cur.pos - 4)
  if depth >= MAX_ARRAY_DEPTH:
    cur.fail(f"{what} nests arrays deeper than {MAX_ARRAY_DEPTH}")
  item = cur.u32(f"the item type of {what}")
  if item not in _TYPE_NAMES:
    cur.fail(f"{what} is an array of unknown value type {item}", cur.pos - 4)
  n = cur.count(f"the length of array {what}", _min_size(item))
  if item in _SCALARS:
    _, fmt, dtype = _SCALARS[item]
    nbytes = n * struct.calcsize(fmt)
    cur.need(nbytes, f"array {what}")
    arr = np.frombuffer(cur.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=n,
                        offset=cur.pos).copy()
    cur.pos += nbytes
    return (arr.astype(bool) if item == 7 else arr), (ARRAY, item)
  if item == STRING:
    return [cur.string(f"{what}[{i}]") for i in range(n)], (ARRAY, STRING)
  values, inner = [], (ARRAY, item)
  for i in range(n):
    v, inner = _value(cur, ARRAY, f"{what}[{i}]", depth + 1)
    values.append(v)
  return values, (ARRAY,) + inner


def _alignment(metadata: dict, types: dict, cur: _Cursor) -> int:
  if "general.alignment" not in metadata:
    return DEFAULT_ALIGNMENT
  a = metadata["general.alignment"]
  if types["general.alignment"] != (4,) or a <= 0 or a & (a - 1):
    cur.fail(f"general.alignment={a!r} ({_TYPE_NAMES.get(types['general.alignment'][0])}) must "
             "be a UINT32 power of two")
  return int(a)


def _tensor_info(cur: _Cursor, index: int, sizes: dict) -> tuple[str, tuple, int, int, int]:
  start = cur.pos
  name = cur.string(f"the name of tensor {index}", limit=MAX_KEY_BYTES)
  what = f"tensor {name!r}"
  n_dims = cur.u32(f"the number of dimensions of {what}")
  if not 1 <= n_dims <= MAX_DIMS:
    cur.fail(f"{what} has {n_dims} dimensions; GGUF tensors have 1 to {MAX_DIMS}", cur.pos - 4)
  dims = tuple(cur.u64(f"dimension {d} of {what}") for d in range(n_dims))
  elements = 1
  for d in dims:
    if d == 0 or d > INT64_MAX:
      cur.fail(f"{what} has dimensions {list(dims)}: each must be in [1, 2^63)", start)
    elements *= d
    if elements > INT64_MAX:
      cur.fail(f"{what} has dimensions {list(dims)}, whose product overflows 2^63 - 1", start)
  ttype = cur.u32(f"the type of {what}")
  if ttype not in sizes:
    cur.fail(f"{what} has unknown tensor type {ttype}", cur.pos - 4)
  block, block_bytes = sizes[ttype]
  if dims[0] % block:
    cur.fail(f"{what} ({type_name(ttype)}) has rows of {dims[0]} elements, not a multiple of "
             f"its block size {block}", start)
  offset = cur.u64(f"the data offset of {what}")
  return name, dims, ttype, offset, elements // block * block_bytes


def _parse(buf, path: str) -> Header:
  cur = _Cursor(buf, path)
  cur.need(4, "the magic")
  magic = bytes(buf[:4])
  if magic != MAGIC:
    cur.fail(f"the magic is {magic!r}, not {MAGIC!r}", 0)
  cur.pos = 4
  version = cur.u32("the version")
  if version not in VERSIONS:
    hint = (" (this looks like a big-endian file, which is not supported)"
            if version & 0xFFFF == 0 and version else "")
    cur.fail(f"version {version} is not supported; supported: {list(VERSIONS)}{hint}", 4)
  n_tensors = cur.count("the tensor count", 24)
  n_kv = cur.count("the key/value count", 13)
  metadata, types = {}, {}
  for i in range(n_kv):
    start = cur.pos
    key = cur.string(f"the key of metadata entry {i}", limit=MAX_KEY_BYTES)
    if key in metadata:
      cur.fail(f"the metadata key {key!r} appears twice", start)
    vtype = cur.u32(f"the value type of {key!r}")
    metadata[key], types[key] = _value(cur, vtype, repr(key))
  alignment = _alignment(metadata, types, cur)
  sizes = quant_sizes()
  infos = []
  for i in range(n_tensors):
    infos.append(_tensor_info(cur, i, sizes))
  data_offset = -(-cur.pos // alignment) * alignment
  tensors = {}
  for name, dims, ttype, offset, nbytes in infos:
    if name in tensors:
      cur.fail(f"the tensor name {name!r} appears twice")
    if offset % alignment:
      cur.fail(f"tensor {name!r} starts at data offset {offset}, not a multiple of the "
               f"alignment {alignment}")
    start = data_offset + offset
    if start + nbytes > cur.size:
      cur.fail(f"tensor {name!r} ({type_name(ttype)}, dims {list(dims)}) needs bytes "
               f"[{start}, {start + nbytes}), past the end of the file", start)
    tensors[name] = TensorInfo(name, dims, ttype, start, nbytes)
  end = data_offset
  for t in sorted(tensors.values(), key=lambda t: t.offset):
    if t.offset < end:
      cur.fail(f"tensor {t.name!r}'s data [{t.offset}, {t.offset + t.nbytes}) overlaps the "
               "tensor before it", t.offset)
    end = t.offset + t.nbytes
  return Header(path, version, metadata, types, tensors, alignment, data_offset, cur.size)


def read_header(path: str | os.PathLike) -> Header:
  """The checked header of the GGUF file at `path` (see the module docstring)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such GGUF file; give the path of a .gguf file.")
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    if size == 0:
      return _parse(b"", path)
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
      view = memoryview(buf)
      try:
        return _parse(view, path)
      finally:
        view.release()


def elements(t: TensorInfo) -> int:
  return math.prod(t.dims)
