"""A safetensors file from elsewhere, checked before a byte of it is mapped.

    header = read_header("models/x/model.safetensors")   # UserError if anything is off
    info = header.tensors["model.embed_tokens.weight"]   # TensorInfo: code, shape, begin, end

The format: 8 bytes, a little-endian header length N; N bytes of UTF-8 JSON,
an object {name: {"dtype", "shape", "data_offsets": [begin, end]}} with an
optional "__metadata__" {str: str}; then the data, which the tensors cover
exactly. `read_header` checks all of it against the file's size: N within
the file (and at most 100 MB, the format's own bound); a JSON object with no
name given twice, and none empty or holding control characters; known dtype
codes, shapes of non-negative ints, offsets of non-negative ints with
begin <= end; each tensor's bytes equal to prod(shape) * its element size;
tensors contiguous and non-overlapping from 0; and the file ending where the
last tensor ends (a cut download is reported as truncated, with how many
bytes are missing). Then the `safetensors` library opens it too (its own
checks), and any complaint of its is a `UserError` as well. After that every
offset is known in bounds, so mapping a tensor can neither read past the
file nor alias another one.

The weights path itself (a directory, a symbolic link loop or one that
points nowhere, a device, an unreadable file) is reported by
`jaxslm.file_checks.check_file` before it is opened.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from jaxslm.errors import UserError
from jaxslm.file_checks import brief, open_file

MAX_HEADER_BYTES = 100_000_000   # the bound the safetensors library itself enforces
_FIELDS = ("dtype", "shape", "data_offsets")
# Bits per element of every dtype the format defines (some are below a byte).
BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
        "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
        "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
        "I64": 64, "U64": 64}
_FIX = "download it again (or re-save it with save_pretrained)"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  code: str                 # the safetensors dtype code, e.g. "BF16"
  shape: tuple[int, ...]
  begin: int                # absolute byte offsets in the file
  end: int

  @property
  def nbytes(self) -> int:
    return self.end - self.begin


@dataclasses.dataclass(frozen=True)
class Header:
  path: str
  size: int                                  # file size in bytes
  tensors: dict[str, TensorInfo]             # in the header's order
  metadata: dict[str, str] | None


def read_header(path: str) -> Header:
  """The validated header of the safetensors file at `path` (see the module doc)."""
  with open_file(path, "safetensors file") as f:
    size = os.fstat(f.fileno()).st_size
    if size < 8:
      raise UserError(f"{path} is {size} bytes long, too short for a safetensors file (8 bytes "
                      f"of header length come first): it is truncated or empty; {_FIX}.")
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8:
      raise UserError(f"{path} is not a complete safetensors file: its header length {n} runs "
                      f"past the end of the file ({size} bytes); it is truncated or not "
                      f"safetensors at all; {_FIX}.")
    if n > MAX_HEADER_BYTES or n < 2:
      raise UserError(f"{path} has a safetensors header length of {n} bytes (expected 2 to "
                      f"{MAX_HEADER_BYTES}); the file is corrupt or not safetensors; {_FIX}.")
    raw = f.read(n)
  if len(raw) != n:
    raise UserError(f"{path} changed while it was read (header cut short); {_FIX}.")
  obj = _parse(path, raw)
  metadata = obj.pop("__metadata__", None)
  if metadata is not None and not (isinstance(metadata, dict) and all(
      isinstance(v, str) for v in metadata.values())):
    raise UserError(f"{path}: the safetensors __metadata__ must be an object of strings, got "
                    f"{_short(metadata)}; {_FIX}.")
  start = 8 + n
  tensors = {name: _tensor(path, name, info, start) for name, info in obj.items()}
  _check_layout(path, tensors, start, size)
  _library_check(path)
  return Header(path, size, tensors, metadata)


def _parse(path: str, raw: bytes) -> dict:
  def pairs(items):
    seen = {}
    for k, v in items:
      if k in seen:
        raise _Duplicate(k)
      seen[k] = v
    return seen
  try:
    obj = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
  except _Duplicate as e:
    raise UserError(f"{path}: the safetensors header gives the name {e.args[0][:200]!r} twice "
                    f"in one object; which one is meant is ambiguous; {_FIX}.") from None
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: the safetensors header is not UTF-8 text (byte {e.start}); the "
                    f"file is corrupt or not safetensors; {_FIX}.") from None
  except (ValueError, RecursionError) as e:   # JSONDecodeError, huge ints, deep nesting
    raise UserError(f"{path}: the safetensors header is not valid JSON "
                    f"({brief(e, 120)}); the file is corrupt or not safetensors; {_FIX}.") from None
  if not isinstance(obj, dict):
    raise UserError(f"{path}: the safetensors header is a JSON {type(obj).__name__}, not an "
                    f"object of tensors; the file is corrupt or not safetensors; {_FIX}.")
  return obj


class _Duplicate(Exception):
  pass


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _tensor(path: str, name: str, info, start: int) -> TensorInfo:
  where = f"{path}: tensor {name[:200]!r}"
  if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
    raise UserError(f"{where} has an empty name or one with control characters (a newline, a "
                    f"NUL, ...), which no model uses; the header is corrupt; {_FIX}.")
  if not isinstance(info, dict) or any(k not in info for k in _FIELDS):
    raise UserError(f"{where} is described by {_short(info)}, not an object with "
                    f"{', '.join(_FIELDS)}; the header is corrupt; {_FIX}.")
  code, shape, offsets = (info[k] for k in _FIELDS)
  if not isinstance(code, str) or code not in BITS:
    raise UserError(f"{where} has dtype {_short(code)}, which is not a safetensors dtype "
                    f"({', '.join(BITS)}); the header is corrupt; {_FIX}.")
  if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
    raise UserError(f"{where} has shape {_short(shape)}; a shape is a list of non-negative "
                    f"integers; the header is corrupt; {_FIX}.")
  if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))
          and 0 <= offsets[0] <= offsets[1]):
    raise UserError(f"{where} has data_offsets {_short(offsets)}; expected [begin, end] with "
                    f"0 <= begin <= end; the header is corrupt; {_FIX}.")
  span = offsets[1] - offsets[0]
  count = _elements(shape, cap=8 * span)
  bits = count * BITS[code]
  if bits % 8 or bits // 8 != span:
    need = f"more than {span}" if count > 8 * span else f"{bits / 8:g}"
    raise UserError(f"{where} is {code} of shape {_short(tuple(shape))}, which takes {need} "
                    f"bytes, but its data_offsets {offsets} span {span}; the header is "
                    f"corrupt; {_FIX}.")
  return TensorInfo(code, tuple(shape), start + offsets[0], start + offsets[1])


def _elements(shape: list[int], cap: int) -> int:
  """prod(shape), or a number above `cap` once it exceeds it (a hostile shape
  of millions of large dimensions would otherwise take long to multiply)."""
  if 0 in shape:
    return 0
  n = 1
  for d in shape:
    n *= d
    if n > cap:
      return cap + 1
  return n


def _check_layout(path: str, tensors: dict[str, TensorInfo], start: int, size: int) -> None:
  """Tensors tile the data exactly: from its start, no gap, no overlap, to the file's end."""
  pos, prev = start, None
  for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
    if t.begin < pos:
      raise UserError(f"{path}: tensors {prev!r} and {name!r} share bytes "
                      f"[{t.begin - start}, {min(pos, t.end) - start}) of the data; each "
                      f"tensor must have bytes of its own (a hostile or corrupt file); {_FIX}.")
    if t.begin > pos:
      raise UserError(f"{path}: bytes [{pos - start}, {t.begin - start}) of the data belong to "
                      f"no tensor (before {name!r}); the header is corrupt; {_FIX}.")
    pos, prev = t.end, name
  if pos > size:
    raise UserError(f"{path} is truncated: its header places tensor data up to byte {pos}, but "
                    f"the file has {size} bytes ({pos - size} missing; an interrupted "
                    f"download?); {_FIX}.")
  if pos < size:
    raise UserError(f"{path} has {size - pos} bytes after the last tensor, which the header "
                    f"does not describe; the file is corrupt; {_FIX}.")


def _library_check(path: str) -> None:
  """The safetensors library's own validation of the header (a second opinion)."""
  try:
    from safetensors import safe_open
  except ImportError:   # checked above already; the library is an extra opinion
    return
  try:
    with safe_open(path, framework="numpy") as f:
      f.keys()
  except Exception as e:   # SafetensorError (or OSError) from the Rust reader
    raise UserError(f"{path} is rejected by the safetensors library ({brief(e)}); {_FIX}.") \
        from None


def _short(x, limit: int = 80) -> str:
  text = repr(x)
  return text if len(text) <= limit else text[:limit] + "..."


def numpy_dtype(code: str):
  """The numpy dtype jaxslm reads a safetensors code as, or None."""
  return _NUMPY.get(code)


def _numpy_table():
  import ml_dtypes
  return {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "F8_E5M2": ml_dtypes.float8_e5m2,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "I16": np.int16, "U16": np.uint16,
          "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I32": np.int32, "U32": np.uint32,
          "F32": np.float32, "F64": np.float64, "I64": np.int64, "U64": np.uint64}


_NUMPY = {code: np.dtype(t) for code, t in _numpy_table().items()}
