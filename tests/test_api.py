"""jaxslm.load + jaxslm.sample on a saved checkpoint, and the streaming launcher."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxslm
from jaxslm.checkpoint import Checkpointer, save_params
from jaxslm.data.synthetic import iter_documents
from jaxslm.models import ModelConfig, init_params
from jaxslm.sampling import generate
from jaxslm.tokenizers import train_sentencepiece

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMPT = "Question: Ava has 3 boxes of 12 pens. How many pens does she have?\nAnswer:"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint of a random tiny model with a trained SentencePiece tokenizer."""
  tok = train_sentencepiece(list(iter_documents(0, 300)), vocab_size=400)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(7))
  workdir = tmp_path_factory.mktemp("run")
  ckpt = Checkpointer(str(workdir / "checkpoints"), keep=1)
  ckpt.save(3, params, {"count": np.zeros(())}, {"step": 3, "model": cfg.to_dict(),
                                                "tokenizer": tok.spec()})
  ckpt.wait()
  return workdir, cfg, params, tok


def test_params_only_checkpoint_loads(saved, tmp_path):
  _, cfg, params, tok = saved
  out = save_params(str(tmp_path / "export"), params, {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  loaded = jaxslm.load(out)
  assert jaxslm.sample(loaded, "Ava", max_new_tokens=5) == jaxslm.sample((cfg, params, tok), "Ava",
                                                                          max_new_tokens=5)
  with pytest.raises(FileExistsError, match="already exists"):
    save_params(out, params, {})


def test_load_then_sample_equals_sampling_in_memory(saved):
  workdir, cfg, params, tok = saved
  loaded = jaxslm.load(str(workdir))
  assert loaded.model_cfg == cfg and loaded.path.endswith("3")
  kw = dict(max_new_tokens=20, temperature=0.9, top_p=0.9, seed=5)
  want = generate(cfg, params, [tok.encode(PROMPT)], eos_id=tok.eos_id, tokenizer=tok, **kw)
  for model in (str(workdir), loaded, str(workdir / "checkpoints" / "3"), (cfg, params, tok)):
    assert jaxslm.sample(model, PROMPT, **kw) == want.completions[0].text
  full = jaxslm.sample(str(workdir), PROMPT, return_result=True, **kw)
  assert full.completions[0].tokens == want.completions[0].tokens


def test_sample_shapes_of_the_answer(saved):
  workdir = saved[0]
  assert isinstance(jaxslm.sample(str(workdir), "Ava", max_new_tokens=3), str)
  two = jaxslm.sample(str(workdir), ["Ava", "Liam has"], max_new_tokens=3)
  assert isinstance(two, list) and len(two) == 2
  grouped = jaxslm.sample(str(workdir), ["Ava", "Liam has"], max_new_tokens=3, n=3,
                          temperature=1.0)
  assert [len(g) for g in grouped] == [3, 3]


def test_sample_bad_input(saved):
  workdir = saved[0]
  with pytest.raises(ValueError, match="prompt 0 is empty"):
    jaxslm.sample(str(workdir), "")
  with pytest.raises(ValueError, match="empty list"):
    jaxslm.sample(str(workdir), [])
  with pytest.raises(ValueError, match="top_k=0"):
    jaxslm.sample(str(workdir), "Ava", top_k=0)
  with pytest.raises(ValueError, match="truncate=True"):
    jaxslm.sample(str(workdir), "Ava " * 200)
  with pytest.warns(UserWarning, match="keeping its last"):
    jaxslm.sample(str(workdir), "Ava " * 200, truncate=True, max_new_tokens=4)
  with pytest.raises(ValueError, match="expected a checkpoint path"):
    jaxslm.sample(42, "Ava")


def test_launcher_streams_and_reports(saved):
  workdir, cfg, params, tok = saved
  want = jaxslm.sample(str(workdir), PROMPT, max_new_tokens=12, stop="\n")
  run = subprocess.run([sys.executable, str(ROOT / "launch" / "sample.py"), "--checkpoint",
                        str(workdir), "--prompt", PROMPT, "--max-new-tokens", "12", "--stop", "\n"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert run.stdout == PROMPT + want + "\n"
  assert "tokens" in run.stderr
  bad = subprocess.run([sys.executable, str(ROOT / "launch" / "sample.py"), "--checkpoint",
                        str(workdir), "--prompt", "x", "--top-p", "2"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and bad.stderr.startswith("error: top_p=2.0")
