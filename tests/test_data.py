"""Tests for jaxslm.data: sources, token cache, batch samplers (all local, no network)."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from jaxslm.data import (BatchSampler, build_token_dataset, eval_batches, iter_texts,
                         open_token_dataset, source_key)
from jaxslm.data import sources, tokens


class BytesTokenizer:
  """ids = utf-8 bytes, EOS = 256; counts the documents it encodes."""

  name = "bytes"

  def __init__(self, vocab_size: int = 257, eos_id: int = 256, offset: int = 0):
    self.vocab_size = vocab_size
    self.eos_id = eos_id
    self.offset = offset  # shifts ids, to exercise ids above 65535
    self.encoded_docs = 0

  def encode(self, text: str) -> list[int]:
    return [b + self.offset for b in text.encode("utf-8")]

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    self.encoded_docs += len(texts)
    return [self.encode(t) for t in texts]

  def spec(self) -> dict:
    return {"kind": "bytes", "vocab_size": self.vocab_size, "offset": self.offset}


def data_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
  cfg = dict(source="synthetic", path="", text_field="text", hf_name="Skylion007/openwebtext",
             hf_config="", hf_split="train", streaming=True, max_documents=0,
             synthetic_documents=50, synthetic_seed=0, synthetic_max_steps=4,
             val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def docs(n, prefix="doc"):
  return [f"{prefix} {i}: " + "lorem ipsum " * (i % 5 + 1) for i in range(n)]


# ---------------------------------------------------------------- sources


def test_txt_files_are_whole_documents_in_sorted_order(tmp_path):
  (tmp_path / "b.txt").write_text("second\n\nstill second")
  (tmp_path / "a.txt").write_text("first")
  (tmp_path / "c.txt").write_text("  \n")  # whitespace only: skipped
  cfg = data_config(tmp_path, source="files", path=str(tmp_path / "*.txt"))
  assert list(iter_texts(cfg)) == ["first", "second\n\nstill second"]


def test_jsonl_reads_text_field_and_skips_blank_lines(tmp_path):
  f = tmp_path / "d.jsonl"
  f.write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n{"text": ""}\n{"body": "x", "text": "three"}\n')
  cfg = data_config(tmp_path, source="files", path=str(f))
  assert list(iter_texts(cfg)) == ["one", "two", "three"]
  cfg.text_field = "body"
  with pytest.raises(ValueError, match=r"d\.jsonl:1 has no field 'body'.*\['id', 'text'\]"):
    list(iter_texts(cfg))


def test_parquet_reads_column_in_batches(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  texts = docs(2500)
  pq.write_table(pa.table({"content": texts, "n": list(range(2500))}), tmp_path / "p.parquet",
                 row_group_size=700)
  cfg = data_config(tmp_path, source="files", path=str(tmp_path / "p.parquet"),
                    text_field="content")
  assert list(iter_texts(cfg)) == texts
  cfg.text_field = "text"
  with pytest.raises(ValueError, match=r"p\.parquet.*no column 'text'.*'content'"):
    list(iter_texts(cfg))


def test_comma_separated_globs_keep_order_and_path_overrides_synthetic(tmp_path):
  write_jsonl(tmp_path / "j" / "2.jsonl", [{"text": "j2"}])
  write_jsonl(tmp_path / "j" / "1.jsonl", [{"text": "j1a"}, {"text": "j1b"}])
  (tmp_path / "t").mkdir()
  (tmp_path / "t" / "x.txt").write_text("tx")
  spec = f"{tmp_path}/t/*.txt, {tmp_path}/j/*.jsonl,{tmp_path}/t/x.txt"  # duplicate dropped
  cfg = data_config(tmp_path, source="synthetic", path=spec)
  assert sources.resolve_source(cfg) == "files"
  assert list(iter_texts(cfg)) == ["tx", "j1a", "j1b", "j2"]
  cfg.max_documents = 2
  assert list(iter_texts(cfg)) == ["tx", "j1a"]
  # a directory means every supported file below it
  cfg.path, cfg.max_documents = str(tmp_path / "j"), 0
  assert list(iter_texts(cfg)) == ["j1a", "j1b", "j2"]


def test_missing_glob_and_unsupported_extension_errors(tmp_path):
  (tmp_path / "a.txt").write_text("a")
  cfg = data_config(tmp_path, source="files", path=f"{tmp_path}/a.txt,{tmp_path}/nope/*.jsonl")
  with pytest.raises(FileNotFoundError, match=r"nope/\*\.jsonl.* matches no files"):
    iter_texts(cfg)
  (tmp_path / "b.csv").write_text("x")
  cfg.path = f"{tmp_path}/*"
  with pytest.raises(ValueError, match=r"unsupported file .*b\.csv"):
    iter_texts(cfg)
  with pytest.raises(ValueError, match="needs data.path"):
    iter_texts(data_config(tmp_path, source="files"))
  with pytest.raises(ValueError, match="data.source='web'"):
    iter_texts(data_config(tmp_path, source="web"))


def test_source_key_tracks_file_content(tmp_path):
  f = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
  cfg = data_config(tmp_path, source="files", path=str(f))
  key = source_key(cfg)
  assert key["files"][0]["path"] == str(f) and key["files"][0]["size"] == f.stat().st_size
  json.dumps(key)
  write_jsonl(f, [{"text": "a"}, {"text": "bb"}])
  assert source_key(cfg) != key


# ---------------------------------------------------------------- Hugging Face


@pytest.fixture
def local_datasets(tmp_path, monkeypatch):
  datasets = pytest.importorskip("datasets")
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  return datasets


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_source_local_directory_and_file(tmp_path, local_datasets, streaming):
  texts = docs(7)
  f = write_jsonl(tmp_path / "hf" / "train.jsonl", [{"text": t, "k": 1} for t in texts])
  for name in (str(tmp_path / "hf"), str(f)):
    cfg = data_config(tmp_path, source="hf", hf_name=name, streaming=streaming)
    assert list(iter_texts(cfg)) == texts
    assert source_key(cfg)["files"][0]["path"] == str(f)
  cfg.max_documents = 3
  assert list(iter_texts(cfg)) == texts[:3]
  cfg.text_field = "body"
  with pytest.raises(ValueError, match="'body'"):
    list(iter_texts(cfg))


def test_hf_unreachable_hub_says_how_to_work_offline(tmp_path, local_datasets, monkeypatch):
  def offline(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'Skylion007/openwebtext' on the Hub")

  monkeypatch.setattr(local_datasets, "load_dataset", offline)
  cfg = data_config(tmp_path, source="hf")
  with pytest.raises(RuntimeError, match=r"(?s)Skylion007/openwebtext.*offline.*"
                                          r"--config\.data\.path=.*local directory"):
    list(iter_texts(cfg))


# ---------------------------------------------------------------- synthetic


def test_synthetic_source(tmp_path):
  pytest.importorskip("jaxslm.data.synthetic")
  cfg = data_config(tmp_path, synthetic_documents=12, synthetic_seed=3)
  texts = list(iter_texts(cfg))
  assert len(texts) == 12 and all(t.startswith("Question:") and "\nAnswer:" in t for t in texts)
  assert texts == list(iter_texts(cfg))
  assert list(iter_texts(data_config(tmp_path, synthetic_documents=12, synthetic_seed=4))) != texts
  assert source_key(cfg)["synthetic_seed"] == 3


# ---------------------------------------------------------------- token cache


def files_config(tmp_path, texts, name="d.jsonl", **overrides):
  f = write_jsonl(tmp_path / "corpus" / name, [{"text": t} for t in texts])
  return data_config(tmp_path, source="files", path=str(f), **overrides)


def test_token_stream_is_documents_plus_eos_split_by_rule(tmp_path):
  texts = docs(2100)  # more than one encode chunk
  cfg = files_config(tmp_path, texts, val_fraction=0.1)
  tok = BytesTokenizer()
  ds = build_token_dataset(cfg, tok, log=lambda s: None)
  period = tokens.val_period(0.1)
  assert period == 10
  val_docs = [t for i, t in enumerate(texts) if i % period == 0]
  train_docs = [t for i, t in enumerate(texts) if i % period != 0]
  expect = lambda ds_: np.concatenate([np.array(tok.encode(t) + [256]) for t in ds_])
  np.testing.assert_array_equal(ds.train, expect(train_docs))
  np.testing.assert_array_equal(ds.val, expect(val_docs))
  assert set(train_docs).isdisjoint(val_docs) and len(train_docs) + len(val_docs) == len(texts)
  assert ds.train.dtype == np.uint16 and not ds.train.flags.writeable
  assert ds.meta["train_documents"] == 1890 and ds.meta["val_documents"] == 210
  assert ds.meta["train_tokens"] == len(ds.train) and ds.meta["tokenizer"] == "bytes"
  assert os.path.getsize(os.path.join(ds.path, "train.bin")) == 2 * len(ds.train)
  assert sorted(os.listdir(ds.path)) == ["meta.json", "train.bin", "val.bin"]
  assert sorted(os.listdir(cfg.cache_dir)) == [os.path.basename(ds.path)]  # no temp dirs left
  reopened = open_token_dataset(ds.path)
  np.testing.assert_array_equal(reopened.val, ds.val)


def test_cache_is_reused_and_keyed_on_tokenizer_and_data(tmp_path):
  texts = docs(40)
  cfg = files_config(tmp_path, texts)
  tok = BytesTokenizer()
  ds1 = build_token_dataset(cfg, tok, log=lambda s: None)
  assert tok.encoded_docs == 40
  lines = []
  ds2 = build_token_dataset(cfg, tok, log=lines.append)
  assert tok.encoded_docs == 40, "second build must not tokenize"
  assert ds2.path == ds1.path and any("reusing" in line for line in lines)
  np.testing.assert_array_equal(ds2.train, ds1.train)

  other = BytesTokenizer(vocab_size=300)  # different spec -> different cache
  ds3 = build_token_dataset(cfg, other, log=lambda s: None)
  assert ds3.path != ds1.path and other.encoded_docs == 40

  write_jsonl(tmp_path / "corpus" / "d.jsonl", [{"text": t} for t in texts + ["new doc"]])
  ds4 = build_token_dataset(cfg, tok, log=lambda s: None)
  assert ds4.path not in (ds1.path, ds3.path) and tok.encoded_docs == 40 + 41

  cfg.val_fraction = 0.5
  assert build_token_dataset(cfg, tok, log=lambda s: None).path != ds4.path


def test_uint32_for_large_vocabularies(tmp_path):
  cfg = files_config(tmp_path, ["héllo", "world", "again"])
  tok = BytesTokenizer(vocab_size=70_000, eos_id=69_999, offset=65_600)
  ds = build_token_dataset(cfg, tok, log=lambda s: None)
  assert ds.meta["dtype"] == "uint32" and ds.train.dtype == np.uint32
  assert os.path.getsize(os.path.join(ds.path, "train.bin")) == 4 * len(ds.train)
  expect = np.array(tok.encode("world") + [69_999] + tok.encode("again") + [69_999])
  np.testing.assert_array_equal(ds.train, expect)
  assert tokens.token_dtype(65_536) == np.uint16 and tokens.token_dtype(65_537) == np.uint32


def test_empty_corpus_and_failed_builds_leave_no_cache(tmp_path):
  cfg = files_config(tmp_path, ["", "   "])
  with pytest.raises(ValueError, match=r"(?s)corpus files .*d\.jsonl.* yielded no documents"):
    build_token_dataset(cfg, BytesTokenizer(), log=lambda s: None)
  assert os.listdir(cfg.cache_dir) == []

  class Broken(BytesTokenizer):
    def encode_batch(self, texts):
      raise RuntimeError("tokenizer crashed")

  cfg = files_config(tmp_path, docs(5))
  with pytest.raises(RuntimeError, match="crashed"):
    build_token_dataset(cfg, Broken(), log=lambda s: None)
  assert os.listdir(cfg.cache_dir) == []

  cfg = files_config(tmp_path, ["only one document"])  # it goes to val; train is empty
  with pytest.raises(ValueError, match="only 1 document"):
    build_token_dataset(cfg, BytesTokenizer(), log=lambda s: None)

  with pytest.raises(ValueError, match="outside"):
    build_token_dataset(files_config(tmp_path, docs(5)), BytesTokenizer(vocab_size=100),
                        log=lambda s: None)
  with pytest.raises(ValueError, match="val_fraction=0.0"):
    build_token_dataset(files_config(tmp_path, docs(5), val_fraction=0.0), BytesTokenizer())


def test_too_short_for_seq_len(tmp_path):
  cfg = files_config(tmp_path, docs(8))  # val: docs 0 and 4 (88 tokens), train: 228 tokens
  ds = build_token_dataset(cfg, BytesTokenizer(), seq_len=16, log=lambda s: None)
  assert len(ds.val) == 88 and len(ds.train) == 228
  with pytest.raises(ValueError, match=r"val split .* has 88 tokens \(2 documents\).*"
                                       r"seq_len \+ 1 = 101.*larger data.val_fraction"):
    build_token_dataset(cfg, BytesTokenizer(), seq_len=100, log=lambda s: None)
  with pytest.raises(ValueError, match=r"train split .* has 228 tokens.*seq_len \+ 1 = "
                                       r"1,025.*smaller seq_len"):
    build_token_dataset(cfg, BytesTokenizer(), seq_len=1024, log=lambda s: None)


# ---------------------------------------------------------------- batches


def test_batch_sampler_is_a_pure_function_of_seed_and_step():
  toks = np.arange(10_000, dtype=np.uint16)
  make = lambda **kw: BatchSampler(toks, seq_len=32, global_batch_size=8, seed=1, **kw)
  s = make()
  b0 = s.batch(0)
  assert b0.dtype == np.int32 and b0.shape == (8, 33) and s.local_batch_size == 8
  np.testing.assert_array_equal(b0, make().batch(0))
  assert not np.array_equal(b0, s.batch(1))
  assert not np.array_equal(b0, BatchSampler(toks, seq_len=32, global_batch_size=8,
                                             seed=2).batch(0))
  # rows are contiguous windows of the token stream
  np.testing.assert_array_equal(b0 - b0[:, :1], np.broadcast_to(np.arange(33), (8, 33)))
  # resume: step k from a fresh sampler equals step k after producing 0..k-1
  for k in range(5):
    s.batch(k)
  np.testing.assert_array_equal(make().batch(5), s.batch(5))
  # processes' rows concatenate to the single-process batch
  parts = [make(process_index=p, process_count=4).batch(3) for p in range(4)]
  assert all(p.shape == (2, 33) for p in parts)
  np.testing.assert_array_equal(np.concatenate(parts), s.batch(3))


def test_batch_sampler_covers_every_start_and_validates():
  toks = np.arange(12, dtype=np.uint16)
  s = BatchSampler(toks, seq_len=4, global_batch_size=64, seed=0)
  starts = np.concatenate([s.batch(i)[:, 0] for i in range(10)])
  assert set(starts.tolist()) == set(range(8))  # every valid start 0..len-seq_len-1
  with pytest.raises(ValueError, match="not divisible by process_count=4"):
    BatchSampler(toks, seq_len=4, global_batch_size=6, seed=0, process_count=4)
  with pytest.raises(ValueError, match="12 tokens, fewer than seq_len"):
    BatchSampler(toks, seq_len=12, global_batch_size=4, seed=0)


def test_eval_batches_fixed_non_overlapping_and_sharded():
  toks = np.arange(1001, dtype=np.uint32)  # 100 windows of seq_len 10
  b = eval_batches(toks, seq_len=10, batch_size=4, num_batches=3)
  assert len(b) == 3 and all(x.shape == (4, 11) and x.dtype == np.int32 for x in b)
  starts = np.concatenate([x[:, 0] for x in b])
  assert np.all(starts % 10 == 0) and len(set(starts.tolist())) == 12
  assert starts.max() >= 900  # evenly spaced over the whole split
  again = eval_batches(toks, seq_len=10, batch_size=4, num_batches=3)
  assert all(np.array_equal(x, y) for x, y in zip(b, again))
  parts = [eval_batches(toks, seq_len=10, batch_size=4, num_batches=3, process_index=p,
                        process_count=2) for p in range(2)]
  for i in range(3):
    np.testing.assert_array_equal(np.concatenate([parts[0][i], parts[1][i]]), b[i])
  # too few windows: every window once, in full batches, remainder dropped
  few = eval_batches(toks, seq_len=10, batch_size=8, num_batches=50)
  assert len(few) == 12
  np.testing.assert_array_equal(np.concatenate([x[:, 0] for x in few]), np.arange(96) * 10)
  assert len(eval_batches(toks, seq_len=10, batch_size=8, num_batches=None)) == 12
  with pytest.raises(ValueError, match="100 windows.*fewer than one batch of 128"):
    eval_batches(toks, seq_len=10, batch_size=128, num_batches=1)


def test_end_to_end_files_to_batches(tmp_path):
  cfg = files_config(tmp_path, docs(200))
  ds = build_token_dataset(cfg, BytesTokenizer(), seq_len=64, log=lambda s: None)
  rows = BatchSampler(ds.train, seq_len=64, global_batch_size=4, seed=0).batch(0)
  assert rows.shape == (4, 65) and rows.max() <= 256
  assert len(eval_batches(ds.val, seq_len=64, batch_size=2, num_batches=2)) == 2


def test_hf_script_repository_retries_on_parquet_export(monkeypatch, tmp_path):
  """datasets >= 4 refuses script-based hub repos; the loader retries on the
  hub's Parquet conversion branch instead of failing."""
  import datasets

  from jaxslm.data import sources

  calls = []

  def fake_load(name, config=None, *, revision=None, split=None, streaming=None):
    calls.append(revision)
    if revision is None:
      raise RuntimeError("Dataset scripts are no longer supported, but found openwebtext.py")
    return datasets.Dataset.from_dict({"text": ["first doc", "second doc"]})

  monkeypatch.setattr(datasets, "load_dataset", fake_load)
  cfg = data_config(tmp_path, source="hf", streaming=False)
  assert list(sources.iter_texts(cfg)) == ["first doc", "second doc"]
  assert calls == [None, sources.PARQUET_REVISION]
