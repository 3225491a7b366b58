import os
import pathlib
import shutil
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TIKTOKEN = ROOT.parent / "shared" / "tiktoken_cache"

if "TIKTOKEN_CACHE_DIR" not in os.environ and SHARED_TIKTOKEN.is_dir():
  os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED_TIKTOKEN)


# One XLA compilation cache for the session (this process and the launchers it
# starts): the many tiny runs compile the same programs again and again.
# Under pytest-xdist the workers inherit the controller's directory and share it;
# whoever made the directory removes it.
_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _XLA_CACHE = tempfile.mkdtemp(prefix="jaxslm-tests-xla-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_sessionfinish(session, exitstatus):
  if _XLA_CACHE is not None:
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
  """Token caches of tests live in one session temp dir, never in ~/.cache."""
  monkeypatch.setenv("JAXSLM_CACHE", str(tmp_path_factory.getbasetemp() / "jaxslm_cache"))
