"""SentencePiece models exported as tokenizer.json: transformers' AutoTokenizer encodes
as jaxslm does (digits, spaces, newlines, unicode), and jax2hf writes them."""

import io
import json
import os

import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

import jaxslm  # noqa: E402
from jaxslm import convert  # noqa: E402
from jaxslm.checkpoint import save_params  # noqa: E402
from jaxslm.data.synthetic import iter_documents  # noqa: E402
from jaxslm.errors import UserError  # noqa: E402
from jaxslm.models import ModelConfig  # noqa: E402
from jaxslm.models.summary import param_shapes  # noqa: E402
from jaxslm.tokenizers import SentencePieceTokenizer, sp_export, train_sentencepiece  # noqa: E402

DOCS = list(iter_documents(0, 300))
TEXTS = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
    "0 7 12 305 4096 3.75 -8 1,234,567 2+2=4 10% $3.50",
    "  leading, double  spaces,\ttabs\t and trailing   ",
    "\n\nnew\nlines\n\n\n",
    "café naïve Ünïcödé — 数学の問題 😀🧮 Ωμέγα ß",
    "",
]


def _auto(tok, tmp_path):
  d = tmp_path / tok.name
  d.mkdir()
  sp_export.to_hf_tokenizer(tok).save(d)
  return transformers.AutoTokenizer.from_pretrained(str(d))


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_trained_models_encode_alike_in_transformers(model_type, tmp_path):
  tok = train_sentencepiece(DOCS, vocab_size=400, model_type=model_type)
  auto = _auto(tok, tmp_path)
  assert len(auto) == tok.vocab_size and auto.eos_token_id == tok.eos_id
  for text in TEXTS + DOCS[:40]:
    ids = auto(text, add_special_tokens=False)["input_ids"]
    assert ids == tok.encode(text), text
    assert auto.decode(ids) == tok.decode(ids) == text


def test_sentencepiece_defaults_dummy_prefix_and_nfkc(tmp_path):
  """SentencePiece's own defaults (Llama 2 style): nmt_nfkc, dummy prefix, extra spaces
  removed, no byte fallback."""
  import sentencepiece as spm
  lines = [line for d in DOCS for line in d.split("\n") if line]
  for model_type in ("bpe", "unigram"):
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=proto,
                                   vocab_size=300, model_type=model_type, minloglevel=2)
    tok = SentencePieceTokenizer(proto.getvalue())
    auto = _auto(tok, tmp_path)
    for text in TEXTS + lines[:40]:
      assert auto(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text


def test_a_tokenizer_that_would_encode_differently_is_refused(monkeypatch):
  bpe = train_sentencepiece(DOCS, vocab_size=400, model_type="bpe")
  other = sp_export.tokenizer_json(train_sentencepiece(DOCS, vocab_size=400,
                                                       model_type="unigram").model_proto)
  monkeypatch.setattr(sp_export, "tokenizer_json", lambda proto: other)
  with pytest.raises(UserError, match="encodes .* differently from it"):
    sp_export.to_hf_tokenizer(bpe)


def test_jax2hf_writes_a_working_tokenizer(tmp_path):
  """Before: no tokenizer files, and AutoTokenizer fell back to an empty one."""
  tok = train_sentencepiece(DOCS, vocab_size=400)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64, dtype="float32")
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(0, 0.05, x.shape).astype(x.dtype),
                        param_shapes(cfg))
  ckpt = save_params(str(tmp_path / "ckpt"), params,
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  out = convert.jaxslm_to_hf(ckpt, str(tmp_path / "hf"))
  assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} <= set(os.listdir(out))
  auto = transformers.AutoTokenizer.from_pretrained(out)
  assert len(auto) == tok.vocab_size
  for text in TEXTS:
    assert auto(text)["input_ids"] == tok.encode(text), text    # no BOS, as jaxslm's default
  config = json.load(open(os.path.join(out, "config.json")))
  assert config["eos_token_id"] == auto.eos_token_id == tok.eos_id
  back = jaxslm.load(convert.hf_to_jaxslm(out, str(tmp_path / "back"))).tokenizer
  assert [back.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]
