"""Local paths and cloud paths (`gs://bucket/dir`, any fsspec URL) behind one interface.

Workdirs, checkpoints and the files a run writes beside them (metrics.jsonl,
plots, summary.json) go through these functions. A local path behaves exactly
as with `os`: resolved to an absolute path, replaced atomically by rename. A
URL goes through `etils.epath` (for gs://: `gcsfs`, see docs/scale_out.md),
while Orbax and TensorStore write the checkpoint arrays to it themselves.

Object stores have no rename: a file written there appears whole or not at
all (one upload), but a directory cannot be swapped into place. Orbax marks a
finished checkpoint on gs:// with a `commit_success.txt` file instead of a
rename, and `finished` checks for it.
"""

from __future__ import annotations

import os
import shutil

COMMIT_FILE = "commit_success.txt"   # Orbax's marker of a finished save on object stores


def is_remote(path) -> bool:
  """True for a URL (`gs://...`); False for a local path."""
  return "://" in os.fspath(path)


def _epath(path):
  from etils import epath
  return epath.Path(os.fspath(path))


def resolve(path) -> str:
  """An absolute local path (`~` expanded), or the URL without a trailing slash."""
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def join(path, *parts: str) -> str:
  path = os.fspath(path)
  if is_remote(path):
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])
  return os.path.join(path, *parts)


def makedirs(path) -> None:
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def exists(path) -> bool:
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def listdir(path) -> list[str]:
  if is_remote(path):
    return [p.name for p in _epath(path).iterdir()]
  return os.listdir(path)


def rmtree(path) -> None:
  """Remove a directory tree if it exists."""
  if is_remote(path):
    p = _epath(path)
    if p.exists():
      p.rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def read_text(path) -> str:
  if is_remote(path):
    return _epath(path).read_text()
  with open(path) as f:
    return f.read()


def write_bytes(path, data: bytes) -> None:
  """Replace a file's content: locally via a temporary file and a rename, on an
  object store by one upload (which is atomic there)."""
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  tmp = os.fspath(path) + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


def append_text(path, text: str) -> None:
  """Append to a file. An object store cannot append: there the file is read
  and uploaded again whole (fine for a metrics log; not for large files)."""
  if is_remote(path):
    old = read_text(path) if exists(path) else ""
    write_text(path, old + text)
    return
  with open(path, "a") as f:
    f.write(text)


def finished(directory) -> bool:
  """Whether a checkpoint directory (a step, or one with params/ and meta/) is
  complete. Locally an unfinished save never has its final name (Orbax renames
  it into place), so any such directory is; on an object store Orbax's
  commit file must be there, at the top or in each item."""
  if not is_remote(directory):
    return True
  if exists(join(directory, COMMIT_FILE)):
    return True
  return all(exists(join(directory, item, COMMIT_FILE)) for item in ("params", "meta"))
