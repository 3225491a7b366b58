"""Ctrl-C and SIGTERM (preemption) as a request to stop at the next safe point.

    stop = StopRequest().install()
    try:
      while ...:
        step()
        if stop.requested:
          save(); break
    finally:
      stop.restore()

The first signal only sets `requested`; a second one gets the previous
(default) behaviour, so a stuck run can still be killed at once.
"""

from __future__ import annotations

import signal


class StopRequest:
  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = False
    self._old: dict = {}

  def _on_signal(self, signum, frame) -> None:
    self.requested = True
    signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

  def install(self) -> "StopRequest":
    for sig in self.SIGNALS:
      try:
        self._old[sig] = signal.signal(sig, self._on_signal)
      except ValueError:  # not the main thread: signals cannot be caught here
        pass
    return self

  def restore(self) -> None:
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    self._old.clear()
