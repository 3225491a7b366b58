"""Conversion files and memory: the safetensors reader and streaming writer
(`jaxslm/convert/files.py`), and that both directions handle one tensor (or
one small batch) at a time, never the whole model twice (`store.py`).

Memory is checked by structure, not by measuring it: weak references show
that every tensor read or restored earlier is gone when the next is read."""

import json
import os
import weakref

import jax
import ml_dtypes
import numpy as np
import pytest

import jaxslm
from jaxslm import convert, tokenizers
from jaxslm.convert import checkpoints, files, store

safetensors_numpy = pytest.importorskip("safetensors.numpy")
pytest.importorskip("tokenizers")


def _mixed():
  rng = np.random.default_rng(0)
  return {"b.weight": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
          "a.weight": rng.standard_normal((4,)).astype(np.float32),
          "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
          "empty": np.zeros((0, 7), np.float32),
          "half": rng.standard_normal((2, 2)).astype(np.float16),
          "mask": np.array([True, False, True])}


def test_streamed_file_is_byte_identical_to_safetensors(tmp_path):
  tensors = _mixed()
  safetensors_numpy.save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
  specs = files.file_order([files.TensorSpec(k, x.shape, x.dtype) for k, x in tensors.items()])
  files.write_file(str(tmp_path / "ours.safetensors"), specs, (tensors[s.name] for s in specs),
                   metadata={"format": "pt"})
  assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_reader_maps_each_tensor(tmp_path):
  tensors = _mixed()
  (tmp_path / "config.json").write_text("{}")
  safetensors_numpy.save_file(tensors, str(tmp_path / "model.safetensors"))
  with files.SafetensorsReader(str(tmp_path)) as reader:
    assert sorted(reader.keys()) == sorted(tensors)
    for k, x in tensors.items():
      got = reader.get(k)
      assert reader.shape(k) == x.shape and got.dtype == x.dtype
      np.testing.assert_array_equal(got, x)


def test_sharded_write_matches_the_shard_plan(tmp_path):
  tensors = _mixed()
  specs = [files.TensorSpec(k, x.shape, x.dtype) for k, x in tensors.items()]
  plan = files.plan_files(specs, max_shard_bytes=40)
  assert len(plan) > 2
  files.write_planned(str(tmp_path), plan, (tensors[s.name] for _, fs in plan for s in fs),
                      order=list(tensors))
  index = json.loads((tmp_path / files.INDEX).read_text())
  assert list(index["weight_map"]) == list(tensors)
  with files.SafetensorsReader(str(tmp_path)) as reader:
    for k, x in tensors.items():
      np.testing.assert_array_equal(reader.get(k), x)


# --------------------------------------------------- one tensor at a time


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A Hugging Face directory written by jaxslm's own exporter (no torch)."""
  cfg = jaxslm.ModelConfig.preset("tiny", dtype="float32", n_layers=2)
  params = jaxslm.models.init_params(cfg, jax.random.PRNGKey(0))
  from tokenizers import Tokenizer, models
  words = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1}, unk_token="<|endoftext|>"))
  tok = tokenizers.HFTokenizer(words.to_str(), eos_id=0)
  return convert.export(cfg, params, tok, str(tmp_path_factory.mktemp("hf") / "hf"))


def test_hf2jax_releases_each_mapped_tensor_before_the_next(hf_dir, tmp_path, monkeypatch):
  """Every tensor mapped from the file (and every view of it) is gone before
  the next is read: the converted tree is all the process keeps."""
  read, live = [], []
  original = files.SafetensorsReader.get

  def get(self, key):
    live.extend(name for name, ref in read if ref() is not None)
    x = original(self, key)
    read.append((key, weakref.ref(x)))
    return x
  monkeypatch.setattr(files.SafetensorsReader, "get", get)
  out = convert.hf_to_jaxslm(hf_dir, str(tmp_path / "ckpt"), dtype="bfloat16")
  assert len(read) > 10 and live == []
  assert all(ref() is None for _, ref in read)
  cfg, params, _ = jaxslm.load(out)
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}


def test_jax2hf_streams_a_batch_at_a_time(hf_dir, tmp_path, monkeypatch):
  """A plain checkpoint exports without loading the whole tree: each batch of
  restored leaves is gone before the next is restored, and the files are
  the same bytes as an export of the loaded params."""
  ckpt = convert.hf_to_jaxslm(hf_dir, str(tmp_path / "ckpt"))
  reference = convert.export(*jaxslm.load(ckpt), str(tmp_path / "reference"),
                             hf_meta=jaxslm.load(ckpt).meta["hf"], max_shard_bytes=200_000)
  batches, live = [], []
  original = store.read_batched

  def read_batched(step_dir, shapes, wanted):
    for batch in original(step_dir, shapes, wanted):
      live.extend(p for refs in batches for p, ref in refs if ref() is not None)
      batches.append([(p, weakref.ref(x)) for p, x in batch.items()])
      yield batch
  monkeypatch.setattr(store, "read_batched", read_batched)
  monkeypatch.setattr(checkpoints, "EXPORT_BATCH_BYTES", 1)   # one tensor per batch

  def no_full_load(*args, **kwargs):
    raise AssertionError("a plain checkpoint must not be loaded whole")
  monkeypatch.setattr("jaxslm.loading.load", no_full_load)
  out = convert.jaxslm_to_hf(ckpt, str(tmp_path / "streamed"), max_shard_bytes=200_000)
  assert len(batches) > 10 and live == []
  names = sorted(f for f in os.listdir(reference) if f.startswith("model"))
  assert len(names) > 2 and names == sorted(f for f in os.listdir(out) if f.startswith("model"))
  for name in names + ["config.json"]:
    assert open(os.path.join(out, name), "rb").read() == \
        open(os.path.join(reference, name), "rb").read(), name
