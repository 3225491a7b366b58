"""Quiet the leftovers of a failed Orbax read.

When TensorStore fails to read one array of a checkpoint (a cut file, a
corrupt chunk, a missing manifest), Orbax raises at once but leaves the reads
of the other arrays running on an event loop it then closes. Their callbacks
later fail with `RuntimeError: Event loop is closed`, asyncio logs "Task
(or Future) exception was never retrieved", and Python warns of coroutines never awaited:
dozens of tracebacks around the one error that matters. `install()` drops
exactly those leftovers; every other unraisable exception, log record and
warning goes through as before. It is called before each checkpoint read, as
the leftovers of a failed read can appear before its error does.
"""

from __future__ import annotations

import logging
import sys
import warnings

_installed = False
_LEFTOVER_COROUTINES = (r"coroutine '(_read_array_index_and_device_put|async_deserialize|_read_shard|"
                        r"Store\._get_array_metadatas)' was never awaited")


def summary(error: BaseException, limit: int = 240) -> str:
  """The first line of the root cause of an Orbax/TensorStore error, shortened
  (TensorStore appends its whole JSON spec, which says nothing to a user)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = (str(error).strip().splitlines() or [""])[0].split(" [tensorstore_spec")[0]
  text = f"{type(error).__name__}: {text}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_leftover(exc: BaseException | None, obj) -> bool:
  if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
    return True
  if isinstance(exc, ImportError) and "sys.meta_path is None" in str(exc):
    return True     # interpreter shutdown while a leftover read still ran
  code = getattr(obj, "cr_code", None)
  return code is not None and "orbax" in code.co_filename


class _AsyncioLeftovers(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:   # noqa: BLE001 - a record we cannot format is not ours to judge
      return True
    return not ("never retrieved" in message
                and any(word in message for word in ("orbax", "tensorstore", "OCDBT")))


def install() -> None:
  """Drop the leftovers of failed Orbax reads for the rest of this process."""
  global _installed
  # Again each time: a `warnings.catch_warnings` block (pytest runs each test
  # in one) drops filters added inside it when it ends.
  warnings.filterwarnings("ignore", message=_LEFTOVER_COROUTINES, category=RuntimeWarning)
  if _installed:
    return
  _installed = True
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_leftover(unraisable.exc_value, unraisable.object):
      previous(unraisable)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_AsyncioLeftovers())
