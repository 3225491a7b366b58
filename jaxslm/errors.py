"""Errors a user can act on.

`UserError` is bad input: a config value, a path, a corpus. Launchers print
its message on one line and exit 2; any other exception is a bug and keeps
its traceback. It subclasses `ValueError`, so `except ValueError` still works.
"""


class UserError(ValueError):
  """Bad input; the message names the value, what was expected and the fix."""


class ResourceUnavailable(UserError, RuntimeError):
  """Something the input names cannot be reached (offline hub, missing ranks)."""


class TrainingDiverged(RuntimeError):
  """The loss or the parameters became NaN or infinite (launchers exit 1)."""


class SaveFailed(UserError, OSError):
  """A checkpoint could not be written (a full disk, a lost mount); the
  message names the last good checkpoint and how to resume."""


def report(error: Exception, code: int = 2) -> int:
  """What a launcher does with an input error: print it on one line to stderr
  and return the exit code, or re-raise it with its traceback when
  JAXSLM_DEBUG=1 is set."""
  import os
  import sys
  if os.environ.get("JAXSLM_DEBUG"):
    raise error
  print(f"error: {error}", file=sys.stderr)
  return code
