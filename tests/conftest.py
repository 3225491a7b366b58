import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TIKTOKEN = ROOT.parent / "shared" / "tiktoken_cache"

if "TIKTOKEN_CACHE_DIR" not in os.environ and SHARED_TIKTOKEN.is_dir():
  os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED_TIKTOKEN)


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
  """Token caches of tests live in one session temp dir, never in ~/.cache."""
  monkeypatch.setenv("JAXSLM_CACHE", str(tmp_path_factory.getbasetemp() / "jaxslm_cache"))
