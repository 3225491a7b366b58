"""Opening files made elsewhere: every failure is a `UserError` naming the file.

    size = check_file(path, "weights file")       # a readable regular file, or why not
    with open_file(path, "data file", "r") as f: ...
    cfg = read_json(path, "config.json")          # UTF-8 JSON, bounded in size
    text = read_text(path, "tokenizer.json")

A path can be missing, a directory, a symbolic link loop or one that points
nowhere, a device or pipe, unreadable, not UTF-8, not JSON, or absurdly large
for what it claims to be; each gets one sentence that says which and what to
do, instead of an OSError or a decoder's traceback. Only `jaxslm.errors` below.
"""

from __future__ import annotations

import errno
import json
import os
import stat

from jaxslm.errors import UserError

MAX_JSON_BYTES = 64 << 20    # config / index / tokenizer_config files are far smaller
MAX_TEXT_BYTES = 1 << 30     # tokenizer.json files are tens of MB at most


def brief(error: BaseException, limit: int = 160) -> str:
  """An exception's text on one line (whitespace collapsed), at most `limit` characters."""
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def check_file(path: str, what: str = "file") -> int:
  """The size of `path`, or a UserError saying why it is not a readable
  regular file: missing, a symbolic link loop, a directory, a device."""
  try:
    st = os.stat(path)
  except OSError as e:
    raise UserError(os_problem(path, what, e)) from None
  if stat.S_ISDIR(st.st_mode):
    raise UserError(f"The {what} {path} is a directory, not a file; remove it or replace it "
                    "with the file itself (e.g. download the model again).")
  if not stat.S_ISREG(st.st_mode):
    raise UserError(f"The {what} {path} is not a regular file (a device, socket or pipe); "
                    "replace it with the file itself.")
  return st.st_size


def open_file(path: str, what: str = "file", mode: str = "rb", **kwargs):
  """`open(path, mode)` after `check_file`; an OSError becomes a UserError."""
  check_file(path, what)
  try:
    return open(path, mode, **kwargs)
  except OSError as e:
    raise UserError(os_problem(path, what, e)) from None


def os_problem(path: str, what: str, e: OSError) -> str:
  """One sentence for an OSError met opening `path`."""
  if e.errno == errno.ELOOP:
    return (f"The {what} {path} is a symbolic link loop (it leads back to itself); replace "
            "the link with the file it should name.")
  if e.errno == errno.ENOENT:
    link = " (a symbolic link to a file that is not there)" if os.path.islink(path) else ""
    return f"The {what} {path} does not exist{link}; check the path, or restore what it names."
  if e.errno in (errno.EACCES, errno.EPERM):
    return (f"The {what} {path} cannot be read (permission denied); fix its permissions "
            "(chmod u+r) or copy it somewhere readable.")
  if e.errno == errno.EISDIR:
    return f"The {what} {path} is a directory, not a file; give the file itself."
  return f"The {what} {path} cannot be read ({e.strerror or e}); check the disk and the path."


def read_text(path: str, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
  """The UTF-8 text of `path`, at most `max_bytes` long."""
  with open_file(path, what) as f:
    try:
      raw = f.read(max_bytes + 1)
    except OSError as e:
      raise UserError(os_problem(path, what, e)) from None
  if len(raw) > max_bytes:
    raise UserError(f"The {what} {path} is over {max_bytes >> 20} MB, far larger than such a "
                    "file is; it is not the file it should be. Restore the original.")
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"The {what} {path} is not UTF-8 text (bad byte at offset {e.start}); it "
                    "is corrupt or another kind of file. Restore or download it again.") from None


def read_json(path: str, what: str = "JSON file", *, missing_ok: bool = False,
              max_bytes: int = MAX_JSON_BYTES):
  """The JSON value in `path` (None when it is absent and `missing_ok`)."""
  if missing_ok and not os.path.lexists(path):
    return None
  text = read_text(path, what, max_bytes)
  try:
    return json.loads(text)
  except (ValueError, RecursionError) as e:   # JSONDecodeError, huge ints, deep nesting
    raise UserError(f"The {what} {path} is not valid JSON ({brief(e, 120)}); fix it or "
                    "download it again.") from None


def read_json_object(path: str, what: str = "JSON file", *, missing_ok: bool = False,
                     max_bytes: int = MAX_JSON_BYTES) -> dict | None:
  """`read_json`, which must be a JSON object (a dict)."""
  if missing_ok and not os.path.lexists(path):
    return None
  value = read_json(path, what, max_bytes=max_bytes)
  if not isinstance(value, dict):
    raise UserError(f"The {what} {path} holds a JSON {type(value).__name__}, not an object; "
                    "restore the file the model was saved with.")
  return value
