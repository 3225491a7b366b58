"""Reading JSON Lines (and other text) files made elsewhere, strictly.

    for lineno, line in lines("data/train.jsonl.gz"):     # str, UTF-8 checked, 1-based
      row = parse(line, f"data/train.jsonl.gz:{lineno}")  # JSON value, or UserError
    text = read_text("data/book.txt")                     # the whole file, UTF-8 checked

Lines are split on "\\n" only (a JSON string may hold U+2028 or a form feed
unescaped; `str.splitlines` would cut the row there), a "\\r" before it is
dropped, and a UTF-8 byte-order mark at the start of the file is ignored.
Every problem is a `UserError` that names the file (and line): a path that
is a directory, a symbolic link loop or unreadable; bytes that are not
UTF-8 (never replaced silently); a .gz file that is damaged or cut short;
JSON that does not parse (bad syntax, numbers too long for Python, nesting
too deep).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

from jaxslm import file_checks
from jaxslm.errors import UserError

_BOM = b"\xef\xbb\xbf"


def _open(path: str, what: str):
  file_checks.check_file(path, what)
  try:
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")
  except OSError as e:
    raise UserError(file_checks.os_problem(path, what, e)) from None


@contextlib.contextmanager
def _reading(path: str, what: str):
  """I/O and decompression errors met while reading `path`, as a UserError."""
  try:
    yield
  except (OSError, EOFError, zlib.error) as e:
    gz = " (a .gz file cut short or damaged?)" if path.lower().endswith(".gz") else ""
    raise UserError(f"The {what} {path} cannot be read to its end{gz}: "
                    f"{file_checks.brief(e)}. Restore or download it again.") from None


def decode(raw: bytes, where: str) -> str:
  """`raw` as UTF-8; a UserError naming `where` and the byte otherwise."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"{where} is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r});"
                    " re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None


def raw_lines(path: str, what: str = "data file") -> Iterator[tuple[int, bytes]]:
  """(1-based line number, bytes of the line without "\\n" / "\\r\\n") of a
  file, gzipped when its name ends in .gz."""
  with _open(path, what) as f, _reading(path, what):
    for lineno, raw in enumerate(f, 1):
      if lineno == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
      raw = raw[:-1] if raw.endswith(b"\n") else raw
      yield lineno, raw[:-1] if raw.endswith(b"\r") else raw


def lines(path: str, what: str = "data file") -> Iterator[tuple[int, str]]:
  """`raw_lines` decoded; a line that is not UTF-8 is a UserError naming it."""
  for lineno, raw in raw_lines(path, what):
    yield lineno, decode(raw, f"{path}:{lineno}")


def read_text(path: str, what: str = "data file") -> str:
  """The whole UTF-8 text of a file, gzipped when its name ends in .gz."""
  with _open(path, what) as f, _reading(path, what):
    raw = f.read()
  return decode(raw[len(_BOM):] if raw.startswith(_BOM) else raw, path)


def parse(line: str, where: str) -> Any:
  """The JSON value of one line; a UserError naming `where` if it is not JSON."""
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f"{where} is not valid JSON ({e.msg} at column {e.colno}); every line of "
                    "a .jsonl file must be one JSON value.") from None
  except (ValueError, RecursionError) as e:   # over-long integers, nesting too deep
    raise UserError(f"{where} is not JSON that can be read ({file_checks.brief(e, 100)}); fix that "
                    "line.") from None


def parse_or_reason(line: str) -> tuple[Any, str | None]:
  """(value, None), or (None, why the line is not JSON): for callers that
  skip bad rows and report them."""
  try:
    return json.loads(line), None
  except json.JSONDecodeError as e:
    return None, f"not valid JSON ({e.msg} at column {e.colno})"
  except (ValueError, RecursionError) as e:
    return None, f"not JSON that can be read ({file_checks.brief(e, 100)})"
