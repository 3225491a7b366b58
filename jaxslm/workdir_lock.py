"""One run per workdir: a lock file taken before a run writes anything.

    with WorkdirLock(workdir):
      ...  # train: checkpoints, metrics.jsonl, plots

The lock is `<workdir>/run.lock`, created atomically (`O_CREAT | O_EXCL`, so
of two runs starting at once exactly one creates it) and holding JSON: pid,
host, start time (UTC), the command line and a random token. A second run on
the same workdir fails with one `WorkdirLocked` line naming the holder.

A lock whose holder died without releasing it (killed with SIGKILL, a crashed
machine) is stale. On the same host it is recognised (no process with that
pid, or one started after the lock was taken: a reused pid) and taken over
with a one-line warning; a lock from another host cannot be checked from
here, so the message says how to remove it. Taking over is itself guarded by
a second exclusive file, so two runs finding the same stale lock cannot both
win.

The lock is released when the `with` block ends and, should the block be left
some other way, at interpreter exit (atexit). In a multi-process run only
process 0 takes it, and every process learns whether it got it. On an object
store (gs://) there is no atomic create: the lock is not taken there, with a
one-line warning.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import socket
import sys
import time
import uuid
from typing import Any, Callable

from jaxslm import paths
from jaxslm.errors import UserError

LOCK_FILE = "run.lock"
_READ_PATIENCE_S = 2.0     # a lock just created may not hold its JSON yet
_BREAKER_STALE_S = 60.0    # a takeover guard older than this was left by a dead process


class WorkdirLocked(UserError):
  """Another run holds the workdir."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:      # exists, owned by someone else
    return True
  return True


def _process_start(pid: int) -> float | None:
  """When process `pid` started (seconds since the epoch), where /proc tells."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[19])     # field 22 of stat: start time in clock ticks after boot
    with open("/proc/stat") as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return None


def holder_is_dead(holder: dict[str, Any]) -> bool:
  """Whether a lock's holder is known to be gone: same host, and no process
  with its pid or one that started after the lock was taken."""
  if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
    return False
  pid = holder["pid"]
  if not _pid_alive(pid):
    return True
  started, proc = holder.get("started_unix"), _process_start(pid)
  return isinstance(started, (int, float)) and proc is not None and proc > started + 2.0


def describe(holder: dict[str, Any]) -> str:
  return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
          + (f" ({' '.join(holder['argv'])[:120]})" if holder.get("argv") else ""))


class WorkdirLock:
  """Hold `<workdir>/run.lock` for the life of a run (see the module doc)."""

  def __init__(self, workdir: str, *, log: Callable[[str], Any] | None = None):
    self.workdir = paths.resolve(workdir)
    self.path = paths.join(self.workdir, LOCK_FILE)
    self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    self.token = uuid.uuid4().hex
    self.held = False

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    # A process that has not imported JAX is not part of a multi-process JAX run.
    jax = sys.modules.get("jax")
    multi = jax is not None and jax.process_count() > 1
    error = None
    if not multi or jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirLocked as e:
        error = e
    if multi:
      import numpy as np
      from jax.experimental import multihost_utils
      failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if failed and error is None:
        raise WorkdirLocked(f"Workdir {self.workdir!r} is in use by another run "
                            "(process 0 names it); choose another --workdir.")
    if error is not None:
      raise error

  def _acquire(self) -> None:
    if paths.is_remote(self.workdir):
      self.log(f"warning: {self.workdir} is on an object store, where a lock file cannot be "
               "created atomically; nothing stops a second run from using it at the same time")
      return
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(20):
      if self._create():
        return
      holder = self._read_holder()
      if holder is None:       # removed between our attempt and the read: try again
        continue
      if not holder_is_dead(holder):
        raise WorkdirLocked(
            f"Workdir {self.workdir!r} is in use by another run: {describe(holder)}. Wait for "
            f"it to finish or stop it, or choose another --workdir"
            + ("" if holder.get("host") == socket.gethostname() else
               f"; if that run is over, delete {self.path}") + ".")
      if self._take_over(holder):
        return
    raise WorkdirLocked(f"Could not take the lock {self.path} (other runs keep taking it); "
                        "make sure one run at a time uses this workdir.")

  def _content(self) -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                       "started_unix": time.time(), "argv": sys.argv, "token": self.token}).encode()

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, self._content())
      os.fsync(fd)
    finally:
      os.close(fd)
    self.held = True
    atexit.register(self.release)
    return True

  def _read_holder(self) -> dict[str, Any] | None:
    """The holder's JSON; None if the lock vanished. A lock that stays
    unreadable (not JSON) past a short wait is an error naming the file."""
    deadline = time.monotonic() + _READ_PATIENCE_S
    while True:
      try:
        with open(self.path, "rb") as f:
          data = f.read()
      except FileNotFoundError:
        return None
      try:
        holder = json.loads(data)
        if isinstance(holder, dict):
          return holder
      except ValueError:
        pass
      if time.monotonic() > deadline:
        raise WorkdirLocked(f"The lock file {self.path} is not a jaxslm lock (not JSON: "
                            f"{data[:60]!r}); if no run uses {self.workdir}, delete it.")
      time.sleep(0.05)

  def _take_over(self, stale: dict[str, Any]) -> bool:
    """Replace a stale lock; True if this run now holds the workdir. Only the
    process that creates the guard file may remove the stale lock, and only if
    the lock is still the one judged stale."""
    guard = self.path + ".takeover"
    try:
      fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        if time.time() - os.path.getmtime(guard) > _BREAKER_STALE_S:
          os.unlink(guard)
      except FileNotFoundError:
        pass
      time.sleep(0.05)
      return False
    try:
      os.close(fd)
      current = self._read_holder()
      if current is not None and current.get("token") == stale.get("token") \
          and current.get("pid") == stale.get("pid"):
        os.unlink(self.path)
      if not self._create():
        return False
    finally:
      os.unlink(guard)
    self.log(f"warning: took over the stale lock of {self.workdir} (its holder, {describe(stale)}, "
             "is no longer running)")
    return True

  def release(self) -> None:
    """Remove the lock if this run holds it (and it is still ours)."""
    if not self.held:
      return
    self.held = False
    atexit.unregister(self.release)
    try:
      with open(self.path, "rb") as f:
        ours = json.loads(f.read()).get("token") == self.token
    except (OSError, ValueError):
      return
    if ours:
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass
