"""Tests for jaxslm.tokenizers: tiktoken (offline cache) and SentencePiece (trained here)."""
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from jaxslm import tokenizers as T

_REPO_CACHE = Path(__file__).resolve().parents[1] / ".." / "shared" / "tiktoken_cache"

SAMPLES = [
    "Natalia sold clips to 48 of her friends in April.",
    "She sold half as many in May: 48/2 = <<48/2=24>>24 clips.\n#### 72",
    "A pen costs $3.50 and a book costs $12; total $15.50.\n\nAnswer:  15.5",
    "  leading spaces, trailing spaces   \n\tand a tab\n",
    "Unicode: ñ, 日本, π ≈ 3.14159, emoji 😀, and \r\n windows newline",
    "",
    "\n",
]


@pytest.fixture
def tiktoken_cache(monkeypatch):
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        if not _REPO_CACHE.is_dir():
            pytest.skip(f"no TIKTOKEN_CACHE_DIR and no cached tiktoken ranks at {_REPO_CACHE}")
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(_REPO_CACHE.resolve()))


@pytest.fixture
def gpt2(tiktoken_cache):
    return T.get_tokenizer("gpt2")


NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Mark"]
ITEMS = ["clips", "apples", "pencils", "books", "cookies", "marbles", "tickets", "shirts"]
VERBS = ["sold", "bought", "baked", "collected", "gave away", "found", "earned", "shared"]


def make_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Small GSM8K-like corpus: multi-line problems with calculator annotations."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, item, verb = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(VERBS)
        a, b, price = rng.randint(2, 200), rng.randint(2, 99), rng.randint(1, 40)
        total = (a + b) * price
        out.append(
            f"{name} {verb} {a} {item} on Monday and {b} more on Tuesday.\n"
            f"Each one costs ${price}. How much money is that in total?\n"
            f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {item}.\n"
            f"That costs {a + b} * {price} = <<{a + b}*{price}={total}>>{total}.\n"
            f"#### {total}"
        )
    return out


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def sp_bpe(corpus):
    return T.train_sentencepiece(corpus, vocab_size=384, model_type="bpe")


@pytest.fixture(scope="module")
def sp_unigram(corpus):
    return T.train_sentencepiece(corpus, vocab_size=350, model_type="unigram")


# ---------------------------------------------------------------- tiktoken


def test_r50k_is_gpt2_vocab(gpt2):
    assert isinstance(gpt2, T.TiktokenTokenizer)
    assert gpt2.name == "r50k_base"
    assert gpt2.vocab_size == 50257
    assert gpt2.eos_id == 50256 == gpt2.pad_id
    assert gpt2.bos_id is None
    assert gpt2.special_tokens == {"<|endoftext|>": 50256}
    assert T.get_tokenizer("r50k_base").encode("hello world") == gpt2.encode("hello world")
    assert gpt2.encode("hello world") == [31373, 995]  # the well-known GPT-2 ids
    assert "r50k_base" in repr(gpt2) and "50257" in repr(gpt2)


@pytest.mark.parametrize("text", SAMPLES)
def test_tiktoken_round_trip(gpt2, text):
    ids = gpt2.encode(text)
    assert all(isinstance(i, int) and 0 <= i < gpt2.vocab_size for i in ids)
    assert gpt2.decode(ids) == text
    assert gpt2.decode(np.asarray(ids, dtype=np.int32)) == text


def test_tiktoken_user_text_never_becomes_special(gpt2):
    ids = gpt2.encode("a <|endoftext|> b")
    assert gpt2.eos_id not in ids
    assert gpt2.decode(ids) == "a <|endoftext|> b"
    assert gpt2.decode([gpt2.eos_id]) == "<|endoftext|>"  # special ids decode, no crash


def test_tiktoken_bos_eos(gpt2):
    assert gpt2.encode("hi", add_eos=True) == gpt2.encode("hi") + [50256]
    with pytest.raises(ValueError, match="no BOS"):
        gpt2.encode("hi", add_bos=True)


def test_tiktoken_offline_error_names_cache_env(monkeypatch, tmp_path):
    import tiktoken.load
    import tiktoken.registry

    def no_network(blobpath):
        raise ConnectionError(f"network disabled in test: {blobpath}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget already-loaded encodings
    with pytest.raises(RuntimeError) as info:
        T.TiktokenTokenizer("r50k_base")
    msg = str(info.value)
    assert "TIKTOKEN_CACHE_DIR" in msg
    assert "shared/tiktoken_cache" in msg
    assert "downloaded" in msg and str(tmp_path) in msg
    assert not list(tmp_path.iterdir())  # nothing was fetched


# ------------------------------------------------------------ sentencepiece


def test_sentencepiece_layout(sp_bpe):
    assert isinstance(sp_bpe, T.SentencePieceTokenizer)
    assert sp_bpe.name == "sentencepiece-bpe-384"
    assert sp_bpe.vocab_size == 384
    assert (sp_bpe.pad_id, sp_bpe.bos_id, sp_bpe.eos_id) == (0, 2, 3)
    assert sp_bpe.special_tokens == {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    assert sp_bpe.encode("\n") == [4]
    assert sp_bpe.encode("a", add_bos=True, add_eos=True) == [2, *sp_bpe.encode("a"), 3]
    assert "sentencepiece-bpe-384" in repr(sp_bpe) and "384" in repr(sp_bpe)


def test_sentencepiece_splits_digits(sp_bpe, corpus):
    ids = sp_bpe.encode("#### 1234")
    digits = [sp_bpe.decode([i]) for i in ids if sp_bpe.decode([i]).strip().isdigit()]
    assert digits == ["1", "2", "3", "4"]


@pytest.mark.parametrize("kind", ["sp_bpe", "sp_unigram"])
@pytest.mark.parametrize("text", SAMPLES)
def test_sentencepiece_round_trip(request, kind, text):
    tok = request.getfixturevalue(kind)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids)) == text


def test_sentencepiece_round_trips_corpus(sp_bpe, sp_unigram, corpus):
    for tok, max_ratio in ((sp_bpe, 0.6), (sp_unigram, 0.75)):
        for text in corpus[:50]:
            assert tok.decode(tok.encode(text)) == text
        # the corpus is in-domain: learned pieces compress it below one id per char
        assert len(tok.encode(corpus[0])) < max_ratio * len(corpus[0])


def test_sentencepiece_concatenation(sp_bpe):
    # no dummy-prefix space: encodings of adjacent documents concatenate cleanly
    a, b = "#### 72", "Natalia sold"
    assert sp_bpe.decode(sp_bpe.encode(a) + sp_bpe.encode(b)) == a + b


def test_decode_special_and_bad_ids(sp_bpe, gpt2):
    assert sp_bpe.decode([0, 1, 2, 3]) is not None  # no crash on special ids
    assert sp_bpe.decode([2, *sp_bpe.encode("x"), 3, 0, 0]) == "x"
    for tok in (sp_bpe, gpt2):
        with pytest.raises(ValueError, match="outside"):
            tok.decode([tok.vocab_size])
        with pytest.raises(ValueError, match="1-D"):
            tok.decode(np.zeros((2, 3), np.int32))
        assert tok.decode([]) == ""


def test_train_is_deterministic(corpus, sp_bpe, sp_unigram):
    again_bpe = T.train_sentencepiece(corpus, vocab_size=384, model_type="bpe")
    again_uni = T.train_sentencepiece(iter(corpus), vocab_size=350, model_type="unigram", seed=0)
    assert again_bpe.model_proto == sp_bpe.model_proto
    assert again_uni.model_proto == sp_unigram.model_proto
    assert sp_bpe.model_proto != sp_unigram.model_proto


def test_train_max_sentences(corpus):
    # each corpus item is 5 lines: 50 lines == first 10 documents
    a = T.train_sentencepiece(corpus, vocab_size=320, max_sentences=50)
    b = T.train_sentencepiece(corpus[:10], vocab_size=320)
    assert a.model_proto == b.model_proto


def test_train_errors(corpus):
    with pytest.raises(ValueError, match="'wordpiece'"):
        T.train_sentencepiece(corpus, vocab_size=384, model_type="wordpiece")
    with pytest.raises(ValueError, match="vocab_size"):
        T.train_sentencepiece(corpus, vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size=5000"):  # too large for this corpus
        T.train_sentencepiece(corpus[:20], vocab_size=5000)
    with pytest.raises(ValueError, match="no non-empty text"):
        T.train_sentencepiece(["", "\n"], vocab_size=300)
    with pytest.raises(TypeError, match="one str"):
        T.train_sentencepiece("just a string", vocab_size=300)


# ------------------------------------------------------------ shared paths


@pytest.mark.parametrize("kind", ["gpt2", "sp_bpe", "sp_unigram"])
def test_encode_batch_matches_encode(request, kind):
    tok = request.getfixturevalue(kind)
    texts = SAMPLES + make_corpus(20, seed=1)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, add_eos=True) == [tok.encode(t, add_eos=True) for t in texts]
    assert tok.encode_batch([]) == []
    with pytest.raises(TypeError, match="use encode"):
        tok.encode_batch("a string")
    with pytest.raises(TypeError, match="encode_batch"):
        tok.encode(["a", "list"])


@pytest.mark.parametrize("kind", ["gpt2", "sp_bpe", "sp_unigram"])
def test_spec_round_trip(request, kind):
    tok = request.getfixturevalue(kind)
    spec = json.loads(json.dumps(tok.spec()))  # JSON-serializable
    rebuilt = T.from_spec(spec)
    assert type(rebuilt) is type(tok)
    assert (rebuilt.name, rebuilt.vocab_size, rebuilt.eos_id, rebuilt.bos_id, rebuilt.pad_id) == (
        tok.name, tok.vocab_size, tok.eos_id, tok.bos_id, tok.pad_id)
    assert rebuilt.special_tokens == tok.special_tokens
    for text in SAMPLES:
        assert rebuilt.encode(text) == tok.encode(text)
    unpickled = pickle.loads(pickle.dumps(tok))
    assert unpickled.encode(SAMPLES[1]) == tok.encode(SAMPLES[1])


def test_sentencepiece_file_then_spec_survives_deletion(sp_bpe, tmp_path):
    path = tmp_path / "tok.model"
    sp_bpe.save(path)
    loaded = T.get_tokenizer(str(path))
    assert loaded.model_proto == sp_bpe.model_proto
    assert loaded.name == "sentencepiece-bpe-384"  # model type read back from the proto
    spec = json.dumps(loaded.spec())
    path.unlink()
    rebuilt = T.from_spec(json.loads(spec))
    assert rebuilt.encode(SAMPLES[2]) == sp_bpe.encode(SAMPLES[2])
    assert rebuilt.decode(rebuilt.encode(SAMPLES[2])) == SAMPLES[2]


def test_from_spec_errors(sp_bpe):
    with pytest.raises(ValueError, match="'bogus'"):
        T.from_spec({"kind": "bogus"})
    with pytest.raises(ValueError, match="model_proto_b64"):
        T.from_spec({"kind": "sentencepiece"})
    bad = dict(sp_bpe.spec(), vocab_size=999)
    with pytest.raises(ValueError, match="vocab_size=999"):
        T.from_spec(bad)


def test_get_tokenizer_errors(tmp_path, tiktoken_cache):
    missing = tmp_path / "nope" / "tok.model"
    with pytest.raises(FileNotFoundError, match="tok.model"):
        T.get_tokenizer(str(missing))
    with pytest.raises(ValueError) as info:
        T.get_tokenizer("llama-unknown")
    msg = str(info.value)
    assert "'llama-unknown'" in msg
    assert "gpt2" in msg and "r50k_base" in msg and "cl100k_base" in msg and ".model" in msg
    assert isinstance(T.get_tokenizer("gpt2"), T.TiktokenTokenizer)


# ------------------------------------------------- package layout, special text


def test_package_keeps_every_old_import_path():
    import importlib

    import jaxslm.tokenizers
    from jaxslm.tokenizers import (HFTokenizer, SentencePieceTokenizer, TiktokenTokenizer,
                                   Tokenizer, from_spec, get_tokenizer, train_sentencepiece)

    imported = {Tokenizer: "base", TiktokenTokenizer: "tiktoken_tok", from_spec: "factory",
                SentencePieceTokenizer: "sentencepiece_tok", HFTokenizer: "hf",
                train_sentencepiece: "sentencepiece_tok", get_tokenizer: "factory"}
    homes = {obj.__name__: module for obj, module in imported.items()}
    for obj, module in imported.items():
        assert obj is getattr(jaxslm.tokenizers, obj.__name__)
        assert obj is getattr(importlib.import_module(f"jaxslm.tokenizers.{module}"), obj.__name__)
    assert set(homes) <= set(jaxslm.tokenizers.__all__)
    # Inside the package, `import tokenizers` is still the Hugging Face library.
    import tokenizers as hf
    assert hf.__name__ == "tokenizers" and hasattr(hf, "Tokenizer")
    assert issubclass(HFTokenizer, Tokenizer)


def test_spec_pickles_through_the_package(sp_bpe):
    rebuilt = pickle.loads(pickle.dumps(sp_bpe))
    assert isinstance(rebuilt, T.SentencePieceTokenizer)
    assert rebuilt.model_proto == sp_bpe.model_proto and rebuilt.eos_ids == (sp_bpe.eos_id,)


def test_allow_special(gpt2, sp_bpe):
    assert gpt2.encode("a<|endoftext|>", allow_special=True)[-1] == gpt2.eos_id
    assert gpt2.encode_batch(["<|endoftext|>"], allow_special=True) == [[gpt2.eos_id]]
    assert gpt2.eos_id not in gpt2.encode("a<|endoftext|>")
    with pytest.raises(ValueError, match="cannot map special-token text"):
        sp_bpe.encode("</s>", allow_special=True)  # control pieces never come from text
    with pytest.raises(ValueError, match="no chat template"):
        sp_bpe.encode_chat([{"role": "user", "content": "hi"}])
    assert gpt2.token_text(gpt2.eos_id) == "<|endoftext|>" and gpt2.token_text(None) is None
