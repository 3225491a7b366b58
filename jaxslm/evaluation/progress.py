"""Generations kept as they are made, so that a stopped evaluation resumes.

`launch/eval.py` writes `<out>/<label>/progress.jsonl` while it generates: a
header naming the model (a hash of every parameter's bytes) and the generation
settings, then one line per problem done (its index, a hash of its prompt's
token ids, its completions and time). Run the same command again after a
crash, Ctrl-C or a lost machine and the problems already done are read back
instead of generated; the file is removed once `summary.json` and
`examples.jsonl` are written. A file from another model or other settings is
said and started over; lines cut by an interrupted write are said and dropped.
Greedy generations depend only on the prompt, so the resumed run scores as one
whole run would (sampling: each problem has its own seed, so the same holds).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np

from jaxslm import checksums

KIND = "jaxslm-eval-progress"
VERSION = 1


def model_digest(params) -> str:
  """A hash of every leaf's name, shape, dtype and bytes (xxh3 per leaf)."""
  h = hashlib.sha256()
  for name, x in sorted(checksums.flatten(params).items()):
    value = checksums.host_value(x)
    dtype = value.dtype if value is not None else np.dtype(x.dtype)
    h.update(f"{name}:{list(np.shape(x))}:{dtype}:".encode())
    h.update((checksums.digest(value) if value is not None else "sharded").encode())
  return h.hexdigest()[:32]


def prompt_digest(ids) -> str:
  return hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16]


def _samples_ok(samples, n) -> bool:
  """A row's completions as generation writes them: `n` of {completion, tokens, finish_reason}."""
  return (isinstance(samples, list) and len(samples) == n and all(
      isinstance(x, dict) and isinstance(x.get("completion"), str)
      and isinstance(x.get("tokens"), int) and x["tokens"] >= 0
      and isinstance(x.get("finish_reason"), str) for x in samples))


class Progress:
  """Problems done so far in `path` for run `key` (model and settings); `log`
  says what was reused or dropped. Writing is best effort: a failed write (a
  full disk) is said once and the evaluation goes on without it."""

  def __init__(self, path: str, key: dict, log: Callable[[str], None]):
    self.path, self.log, self.broken = path, log, False
    self.key = json.loads(json.dumps(key, sort_keys=True))
    self.rows: dict[tuple[int, str], dict] = {}
    header, rows, bad = self._read()
    if header is not None and header != {"kind": KIND, "version": VERSION, "key": self.key}:
      log(f"  note: {path} holds the progress of another model or other settings; "
          "starting over (it is replaced)")
      rows = []
    if bad:
      log(f"  note: {bad} unreadable line(s) of {path} dropped (an interrupted write); "
          "their problems run again")
    for r in rows:
      self.rows[(r["index"], r["prompt"])] = r
    self._write_all()

  def _read(self):
    if not os.path.exists(self.path):
      return None, [], 0
    try:
      with open(self.path, "rb") as f:
        lines = f.read().decode("utf-8", errors="replace").split("\n")
    except OSError as e:
      self.log(f"  note: {self.path} could not be read ({e}); starting over")
      return None, [], 0
    try:
      header = json.loads(lines[0])
    except ValueError:
      self.log(f"  note: {self.path} is not a progress file (first line unreadable); starting over")
      return None, [], 0
    if not isinstance(header, dict):
      return {}, [], 0
    rows, bad = [], 0
    for line in lines[1:]:
      if not line.strip():
        continue
      try:
        r = json.loads(line)
        if not (isinstance(r, dict) and isinstance(r.get("index"), int)
                and isinstance(r.get("prompt"), str) and _samples_ok(r.get("samples"),
                                                                     self.key.get("n"))
                and isinstance(r.get("time_s"), (int, float))):
          raise ValueError(line[:40])
      except ValueError:
        bad += 1
        continue
      rows.append(r)
    return header, rows, bad

  def _write_all(self) -> None:
    """The header and the rows kept, written whole (a temporary file, then renamed)."""
    tmp = self.path + ".tmp"
    try:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      with open(tmp, "w") as f:
        f.write(json.dumps({"kind": KIND, "version": VERSION, "key": self.key}) + "\n")
        for r in self.rows.values():
          f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self.path)
    except OSError as e:
      self._failed(e)

  def _failed(self, e: OSError) -> None:
    if not self.broken:
      self.log(f"  note: progress not saved to {self.path} ({e}); the evaluation goes on, "
               "but a stop now would not resume")
    self.broken = True

  def take(self, index: int, prompt: str) -> dict | None:
    """The saved row of problem `index` with prompt digest `prompt`, or None."""
    return self.rows.get((index, prompt))

  def add(self, rows: list[dict]) -> None:
    """Rows of {index, prompt, samples, time_s}, appended and synced."""
    for r in rows:
      self.rows[(r["index"], r["prompt"])] = r
    if self.broken:
      return
    try:
      with open(self.path, "a") as f:
        for r in rows:
          f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
      self._failed(e)

  @staticmethod
  def finish_path(path: str) -> None:
    """The evaluation is written: its progress file is no longer needed."""
    for p in (path, path + ".tmp"):
      try:
        os.remove(p)
      except FileNotFoundError:
        pass
