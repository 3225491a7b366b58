"""Errors a user can act on.

`UserError` is bad input: a config value, a path, a corpus. Launchers print
its message on one line and exit 2; any other exception is a bug and keeps
its traceback. It subclasses `ValueError`, so `except ValueError` still works.
"""


class UserError(ValueError):
  """Bad input; the message names the value, what was expected and the fix."""


class ResourceUnavailable(UserError, RuntimeError):
  """Something the input names cannot be reached (offline hub, missing ranks)."""
