"""Files from elsewhere besides model weights: JSONL / text / parquet corpora
(`jaxslm.data.sources`, via `jaxslm.data.jsonl`), GSM8K files, tokenizer
files, LoRA adapter directories. Each damaged file is a UserError naming
it (or, for GSM8K rows, a skipped row with its reason), never a traceback
and never bytes replaced silently."""

import gzip
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from jaxslm import lora, tokenizers
from jaxslm.data import gsm8k, iter_texts, jsonl
from jaxslm.data.sources import source_key
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig, init_params


def _files(tmp_path, pattern):
  return ml_collections.ConfigDict(dict(
      source="files", path=str(tmp_path / pattern), text_field="text", hf_name="", hf_config="",
      hf_split="train", streaming=False, max_documents=0, synthetic_documents=0,
      synthetic_seed=0, synthetic_max_steps=0))


def _texts(tmp_path, pattern="*"):
  return list(iter_texts(_files(tmp_path, pattern)))


# ------------------------------------------------------------------ JSONL


def test_jsonl_rows_read_exactly_as_json_reads_them(tmp_path):
  """The slow reference is json.loads of each "\\n"-separated line: separators
  inside strings (U+2028, form feed, a lone CR) stay text, CRLF and a BOM go."""
  rows = [{"text": "line\u2028separator and \x0c feed"}, {"text": "cr\rinside"},
          {"text": "ünï ✓"}]
  raw = "\ufeff" + "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows)
  (tmp_path / "a.jsonl").write_bytes(raw.encode("utf-8"))
  assert _texts(tmp_path) == [r["text"] for r in rows]
  with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
    f.write(raw.encode("utf-8"))
  assert _texts(tmp_path, "b.jsonl.gz") == [r["text"] for r in rows]


@pytest.mark.parametrize("content,pattern", [
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', r"a\.jsonl:2 is not UTF-8 text \(byte 13"),
    (b'{"text": "ok"}\n{"text": \n', r"a\.jsonl:2 is not valid JSON"),
    (b'{"text": ' + b"1" * 5000 + b"}\n", r"a\.jsonl:1 is not JSON that can be read"),
    (b"[" * 200_000 + b"]" * 200_000 + b"\n", r"a\.jsonl:1 is not JSON that can be read"),
    (b'["text"]\n', r"a\.jsonl:1 holds a list"),
])
def test_damaged_jsonl_names_file_and_line(tmp_path, content, pattern):
  (tmp_path / "a.jsonl").write_bytes(content)
  with pytest.raises(UserError, match=pattern):
    _texts(tmp_path)


def test_text_file_that_is_not_utf8(tmp_path):
  (tmp_path / "a.txt").write_bytes("fine\n".encode() + b"\xff\xfe bad")
  with pytest.raises(UserError, match=r"a\.txt is not UTF-8 text \(byte 5"):
    _texts(tmp_path)


def test_truncated_and_fake_gzip(tmp_path):
  data = gzip.compress(b"".join(b'{"text": "row %d"}\n' % i for i in range(2000)))
  (tmp_path / "cut.jsonl.gz").write_bytes(data[:len(data) // 2])
  with pytest.raises(UserError, match=r"cut\.jsonl\.gz cannot be read to its end \(a \.gz file"):
    _texts(tmp_path, "cut.jsonl.gz")
  (tmp_path / "fake.jsonl.gz").write_bytes(b'{"text": "not compressed"}\n')
  with pytest.raises(UserError, match=r"fake\.jsonl\.gz cannot be read to its end"):
    _texts(tmp_path, "fake.jsonl.gz")


def test_data_paths_that_are_links_to_nowhere(tmp_path):
  os.symlink("loop.jsonl", tmp_path / "loop.jsonl")
  with pytest.raises(UserError, match=r"loop\.jsonl is a symbolic link loop"):
    _texts(tmp_path, "loop.jsonl")
  with pytest.raises(UserError, match=r"loop\.jsonl is a symbolic link loop"):
    source_key(_files(tmp_path, "loop.jsonl"))
  os.remove(tmp_path / "loop.jsonl")
  os.symlink("gone/x.jsonl", tmp_path / "dangling.jsonl")
  with pytest.raises(UserError, match=r"dangling\.jsonl does not exist \(a symbolic link"):
    _texts(tmp_path, "dangling.jsonl")


def test_damaged_parquet(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": [f"row {i}" for i in range(100)]}), tmp_path / "a.parquet")
  assert len(_texts(tmp_path, "a.parquet")) == 100
  raw = (tmp_path / "a.parquet").read_bytes()
  (tmp_path / "a.parquet").write_bytes(raw[:len(raw) // 2])
  with pytest.raises(UserError, match=r"a\.parquet.*cannot be read"):
    _texts(tmp_path, "a.parquet")


def test_jsonl_module_reference_on_random_lines():
  """`jsonl.lines` splits exactly as bytes.split(b"\\n") (CR and BOM aside)."""
  import tempfile
  rng = np.random.default_rng(0)
  alphabet = ["a", "\u2028", "\x0c", "\x1c", "\x85", "\r", "\n", "é", "\u2029", " "]
  for _ in range(20):
    text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 60))))
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
      f.write(text.encode("utf-8"))
    try:
      got = [line for _, line in jsonl.lines(f.name)]
    finally:
      os.remove(f.name)
    want = text.split("\n")
    if want and want[-1] == "":
      want.pop()
    assert got == [w[:-1] if w.endswith("\r") else w for w in want]


# ------------------------------------------------------------------ GSM8K


def _row(q="What is 2+2?", a="2+2=4\n#### 4"):
  return {"question": q, "answer": a}


def test_gsm8k_bad_bytes_are_skipped_rows_with_reasons(tmp_path):
  lines = [json.dumps(_row()).encode(), b'{"question": "caf\xe9", "answer": "#### 1"}',
           json.dumps(_row("Sep\u2028arated?"), ensure_ascii=False).encode(),
           b'{"question": "x", "answer": ' + b"9" * 5000 + b"}"]
  (tmp_path / "test.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  split = gsm8k.load("test", path=str(tmp_path))
  assert [e.question for e in split.examples] == ["What is 2+2?", "Sep\u2028arated?"]
  assert split.rows == 4
  assert split.skipped[0] == (1, "line 2 is not UTF-8 text (byte 17)")
  assert split.skipped[1][0] == 3 and "line 4 is not JSON that can be read" in split.skipped[1][1]


def test_gsm8k_unreadable_files(tmp_path):
  (tmp_path / "test.jsonl").mkdir()
  with pytest.raises(UserError, match=r"test\.jsonl is a directory"):
    gsm8k.load("test", path=str(tmp_path))
  os.symlink("self.json", tmp_path / "self.json")
  with pytest.raises(UserError, match=r"self\.json is a symbolic link loop"):
    gsm8k.load(path=str(tmp_path / "self.json"))
  (tmp_path / "latin.json").write_bytes(b'[{"question": "caf\xe9", "answer": "#### 1"}]')
  with pytest.raises(UserError, match=r"latin\.json is not UTF-8"):
    gsm8k.load(path=str(tmp_path / "latin.json"))


# ------------------------------------------------------------------ tokenizers


def _word_level_json():
  from tokenizers import Tokenizer, models
  vocab = {"<eos>": 0, "a": 1, "b": 2}
  return Tokenizer(models.WordLevel(vocab, unk_token="<eos>")).to_str()


def test_tokenizer_files(tmp_path):
  pytest.importorskip("tokenizers")
  (tmp_path / "tokenizer.json").write_text(_word_level_json())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
  assert tokenizers.get_tokenizer(str(tmp_path)).eos_id == 0
  # A special token given as a list is no token (transformers would refuse it too).
  (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 0}))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": ["<eos>"]}))
  assert tokenizers.get_tokenizer(str(tmp_path)).eos_id == 0
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": {"x": 1}}))
  with pytest.raises(UserError, match=r"chat_template .* is a dict"):
    tokenizers.get_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer_config.json").write_bytes(b'{"eos_token": "\xff"}')
  with pytest.raises(UserError, match=r"tokenizer_config\.json .*not UTF-8"):
    tokenizers.get_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer_config.json").unlink()
  (tmp_path / "tokenizer.json").write_text(_word_level_json()[:-20])
  with pytest.raises(UserError, match=r"tokenizer\.json is not a valid tokenizer\.json"):
    tokenizers.get_tokenizer(str(tmp_path / "tokenizer.json"))


def test_sentencepiece_model_files(tmp_path):
  (tmp_path / "garbage.model").write_bytes(os.urandom(300))
  with pytest.raises(UserError, match=r"garbage\.model: .*not a valid SentencePiece"):
    tokenizers.get_tokenizer(str(tmp_path / "garbage.model"))
  sp = tokenizers.train_sentencepiece(["some text to train on, 1 2 3"] * 50, vocab_size=300)
  sp.save(tmp_path / "good.model")
  raw = (tmp_path / "good.model").read_bytes()
  (tmp_path / "cut.model").write_bytes(raw[:len(raw) // 2])
  with pytest.raises(UserError, match=r"cut\.model: "):
    tokenizers.get_tokenizer(str(tmp_path / "cut.model"))
  (tmp_path / "dir.model").mkdir()
  with pytest.raises(UserError, match=r"dir\.model is a directory"):
    tokenizers.get_tokenizer(str(tmp_path / "dir.model"))
  assert tokenizers.get_tokenizer(str(tmp_path / "good.model")).encode("text") == sp.encode("text")


# ------------------------------------------------------------------ LoRA adapters


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
  cfg = ModelConfig.preset("tiny", dtype="float32", n_layers=1)
  base = init_params(cfg, jax.random.PRNGKey(0))
  wrapped = lora.add_adapter(base, lora.LoraConfig(rank=2), jax.random.PRNGKey(1))
  out = lora.save_adapters(str(tmp_path_factory.mktemp("lora") / "ad"), wrapped, {"base": "b"})
  return out, base


def _edit_record(directory, edit, resign=True):
  """Edit the adapter record. `resign`: update the meta's checksum to match, as a
  record forged elsewhere would be; the record's own checks must still catch it."""
  from jaxslm import checksums
  path = os.path.join(directory, "meta", "metadata")
  meta = json.loads(open(path).read())
  edit(meta["lora"])
  if resign:
    meta[checksums.KEY]["meta"] = checksums.meta_digest(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


def test_an_edited_record_without_its_checksum_is_damaged(adapters, tmp_path):
  directory, base = adapters
  d = shutil.copytree(directory, tmp_path / "ad")
  _edit_record(str(d), lambda r: _first(r).update(ranks=[1]), resign=False)
  with pytest.raises(UserError, match=r"adapter record .*cannot be read \(DamagedCheckpoint"):
    lora.load_adapters(str(d), base)


def _first(rec):
  return rec["adapters"][sorted(rec["adapters"])[0]]


@pytest.mark.parametrize("edit,pattern", [
    (lambda r: _first(r).update(ranks=[10**9]), r"ranks \[1000000000\] are not positive"),
    (lambda r: _first(r).update(ranks=[0]), r"ranks \[0\]"),
    (lambda r: _first(r).update(dtypes=["int8"]), r"dtypes \['int8'\]"),
    (lambda r: _first(r).update(scales=[float("inf")]), r"scales \[inf\]"),
    (lambda r: _first(r).update(base_shape=[64]), r"base_shape \[64\]"),
    (lambda r: _first(r).update(dropout=2), r"dropout 2"),
    (lambda r: r.update(adapters=[]), r"'adapters' is \[\]"),
    (lambda r: _first(r).update(ranks=[1]), r"do not match the adapter record: .*a0: stored float32\[64, 2\], recorded float32\[64, 1\]"),
])
def test_damaged_adapter_record(adapters, tmp_path, edit, pattern):
  directory, base = adapters
  d = shutil.copytree(directory, tmp_path / "ad")
  _edit_record(str(d), edit)
  with pytest.raises(UserError, match=pattern):
    lora.load_adapters(str(d), base)


def test_damaged_adapter_files(adapters, tmp_path):
  directory, base = adapters
  d = shutil.copytree(directory, tmp_path / "ad")
  (d / "meta" / "metadata").write_text("{not json")
  with pytest.raises(UserError, match=r"adapter record .*meta cannot be read"):
    lora.load_adapters(str(d), base)
  d = shutil.copytree(directory, tmp_path / "ad2")
  shutil.rmtree(d / "params")
  # The checkpoint layout check (every item present) finds it before the arrays are read.
  with pytest.raises(UserError, match=r"adapter record .*its params item is missing"):
    lora.load_adapters(str(d), base)
  os.symlink("loop", tmp_path / "loop")
  with pytest.raises(UserError, match=r"adapter directory .*loop is a symbolic link loop"):
    lora.load_adapters(str(tmp_path / "loop"), base)
  assert lora.load_adapters(directory, base) is not None   # the intact one still loads
