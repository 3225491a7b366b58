"""Damaged and hostile Hugging Face directories through `launch/convert.py hf2jax`.

Each case starts from a tiny Llama saved by transformers, breaks one thing
(the weights, config.json, the tokenizer files, the index of a sharded
model, the paths themselves), and asks that the launcher return 2 with one
line on stderr that names the file, leaving nothing at --out (nor a
temporary sibling). NaN / inf weights convert, with one warning naming them.
The safetensors reader itself is fuzzed in tests/test_untrusted_fuzz.py."""

import importlib.util
import json
import os
import shutil
import struct
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from jaxslm import convert  # noqa: E402
from jaxslm.errors import UserError  # noqa: E402

ST = "model.safetensors"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  """A tiny random Llama saved by transformers, with a word-level tokenizer.json."""
  from tokenizers import Tokenizer, models
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
  model = transformers.LlamaForCausalLM(config)
  d = tmp_path_factory.mktemp("untrusted") / "hf"
  model.save_pretrained(str(d))
  vocab = {"<|endoftext|>": 0, **{chr(97 + i): i + 1 for i in range(26)}}
  Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>")).save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>"}))
  return d


def _main():
  path = os.path.join(os.path.dirname(__file__), "..", "launch", "convert.py")
  spec = importlib.util.spec_from_file_location("launch_convert_untrusted", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.main


# ------------------------------------------------------------------ damage


def _header(path):
  raw = path.read_bytes()
  n = struct.unpack("<Q", raw[:8])[0]
  return json.loads(raw[8:8 + n]), raw[8 + n:]


def _rewrite(path, header, data, pad=True):
  text = json.dumps(header).encode()
  if pad:
    text += b" " * (-len(text) % 8)
  path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _edit_header(edit):
  def damage(d):
    header, data = _header(d / ST)
    data = edit(header, data)
    _rewrite(d / ST, header, data)
  return damage


def _first(header):
  return sorted(k for k in header if k != "__metadata__")[0]


def _by_offset(header):
  return sorted((k for k in header if k != "__metadata__"),
                key=lambda k: header[k]["data_offsets"][0])


def _share_bytes(header, data):
  """The second tensor (in file order) points at the first one's bytes, and
  the bytes it had are dropped: a file that would convert, aliased."""
  a, b = _by_offset(header)[:2]
  if header[a]["shape"] != header[b]["shape"]:
    header[b]["shape"] = header[a]["shape"]
  header[b]["data_offsets"] = list(header[a]["data_offsets"])
  return data


def _set(key, value):
  def edit(header, data):
    header[_first(header)][key] = value
    return data
  return edit


def _config(**changes):
  def damage(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
  return damage


def _write(name, content):
  def damage(d):
    if (d / name).is_dir():
      shutil.rmtree(d / name)
    else:
      (d / name).unlink(missing_ok=True)
    (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
  return damage


def _truncate(fraction=None, size=None):
  def damage(d):
    raw = (d / ST).read_bytes()
    (d / ST).write_bytes(raw[:size if size is not None else int(len(raw) * fraction)])
  return damage


def _replace_with_dir(d):
  (d / ST).unlink()
  (d / ST).mkdir()


def _symlink_loop(d):
  (d / ST).unlink()
  os.symlink(ST, d / ST)


def _dangling(d):
  (d / ST).unlink()
  os.symlink("elsewhere/gone.safetensors", d / ST)


def _header_length(n):
  def damage(d):
    raw = (d / ST).read_bytes()
    (d / ST).write_bytes(struct.pack("<Q", n) + raw[8:])
  return damage


def _raw_header(text: bytes):
  def damage(d):
    _, data = _header(d / ST)
    (d / ST).write_bytes(struct.pack("<Q", len(text)) + text + data)
  return damage


def _duplicate_name(d):
  header, data = _header(d / ST)
  k = _first(header)
  text = json.dumps(header)[:-1] + f', "{k}": ' + json.dumps(header[k]) + "}"
  _raw_header(text.encode())(d)


def _decoy_layers(d):
  """200 one-element tensors named as layers, and a config that claims them:
  a layer bound from the names alone would let the converter trace a
  200-layer model (minutes) before finding the real tensors missing."""
  tensors = safetensors_numpy.load_file(str(d / ST))
  tensors.update({f"model.layers.{i}.decoy": np.zeros(1, np.float32) for i in range(200)})
  safetensors_numpy.save_file(tensors, str(d / ST))
  _config(num_hidden_layers=200)(d)


def _sharded(edit_index):
  """Split the weights in two shards with an index, then damage the index."""
  def damage(d):
    tensors = safetensors_numpy.load_file(str(d / ST))
    (d / ST).unlink()
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for file, keys in shards.items():
      safetensors_numpy.save_file({k: tensors[k] for k in keys}, str(d / file))
      weight_map.update({k: file for k in keys})
    index = {"metadata": {}, "weight_map": weight_map}
    index = edit_index(index) or index
    text = index if isinstance(index, str) else json.dumps(index)
    (d / "model.safetensors.index.json").write_text(text)
  return damage


def _index_escape(index):
  k = next(iter(index["weight_map"]))
  index["weight_map"][k] = "../../outside.safetensors"


def _index_missing_tensor(index):
  index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"


# (id, damage, regex the one-line message must match)
CASES = [
    ("truncated-half", _truncate(0.5), r"model\.safetensors is truncated.*missing"),
    ("truncated-in-header", _truncate(size=40), r"model\.safetensors.*header length \d+ runs past"),
    ("truncated-to-4-bytes", _truncate(size=4), r"model\.safetensors is 4 bytes long"),
    ("empty-file", _truncate(size=0), r"model\.safetensors is 0 bytes long"),
    ("header-length-huge", _header_length(2**63), r"header length \d+ runs past"),
    ("header-length-zero", _header_length(0), r"header length of 0 bytes"),
    ("header-not-json", _raw_header(b"{not json at all}      "), r"not valid JSON"),
    ("header-a-list", _raw_header(b"[1, 2, 3]"), r"header is a JSON list"),
    ("header-not-utf8", _raw_header(b'{"\xff\xfe": 1}  '), r"not UTF-8"),
    ("entry-a-string", _edit_header(lambda h, d: (h.update({_first(h): "x"}), d)[1]),
     r"is described by 'x'"),
    ("entry-without-offsets", _edit_header(lambda h, d: (h[_first(h)].pop("data_offsets"), d)[1]),
     r"not an object with dtype, shape, data_offsets"),
    ("dtype-unknown", _edit_header(_set("dtype", "F33")), r"dtype 'F33'.*not a safetensors dtype"),
    ("dtype-a-number", _edit_header(_set("dtype", 7)), r"dtype 7"),
    ("shape-negative", _edit_header(_set("shape", [-4, 8])), r"shape \[-4, 8\]"),
    ("shape-strings", _edit_header(_set("shape", ["32", "32"])), r"shape \['32', '32'\]"),
    ("shape-floats", _edit_header(_set("shape", [32.0])), r"shape \[32\.0\]"),
    ("shape-too-big", _edit_header(_set("shape", [10**6, 10**6])), r"takes more than \d+ bytes"),
    ("offsets-reversed", _edit_header(_set("data_offsets", [64, 0])), r"data_offsets \[64, 0\]"),
    ("offsets-out-of-bounds",
     _edit_header(lambda h, d: (h[_by_offset(h)[-1]].update(
         data_offsets=[h[_by_offset(h)[-1]]["data_offsets"][0], 10**12]), d)[1]),
     r"takes \d+ bytes, but its data_offsets"),
    ("two-tensors-share-bytes", _edit_header(_share_bytes), r"share bytes"),
    ("gap-between-tensors",
     _edit_header(lambda h, d: (h.pop(_by_offset(h)[1]), d)[1]), r"belong to no tensor"),
    ("trailing-bytes", _edit_header(lambda h, d: d + b"\0" * 16), r"16 bytes after the last"),
    ("metadata-not-strings", _edit_header(lambda h, d: (h.update(__metadata__={"format": 1}), d)[1]),
     r"__metadata__ must be an object of strings"),
    ("tensor-named-twice", _duplicate_name, r"gives the name .* twice in one object"),
    ("weights-a-directory", _replace_with_dir, r"model\.safetensors is a directory"),
    ("weights-symlink-loop", _symlink_loop, r"model\.safetensors is a symbolic link loop"),
    ("weights-dangling-symlink", _dangling, r"model\.safetensors does not exist \(a symbolic link"),
    ("config-layers-absurd", _config(num_hidden_layers=10**9),
     r"config\.json: num_hidden_layers=1000000000, but the weights hold tensors of at most 2 "
     r"layers"),
    ("config-layers-decoys", _decoy_layers, r"missing tensors model\.layers\.10\..*unexpected"),
    ("config-layers-one-too-many", _config(num_hidden_layers=3), r"num_hidden_layers=3, but"),
    ("config-layers-negative", _config(num_hidden_layers=-1), r"num_hidden_layers=-1 is not a positive"),
    ("config-layers-string", _config(num_hidden_layers="2"), r"num_hidden_layers='2' is not a positive"),
    ("config-hidden-absurd", _config(hidden_size=10**12), r"hidden_size=1000000000000 is larger"),
    ("config-vocab-absurd", _config(vocab_size=2**40), r"vocab_size=\d+ is larger"),
    ("config-heads-zero", _config(num_attention_heads=0), r"num_attention_heads=0 is not a positive"),
    ("config-eps-null", _config(rms_norm_eps=None), r"rms_norm_eps=None is not a finite number"),
    ("config-theta-negative", _config(rope_theta=-5.0), r"rope_theta=-5\.0 must be positive"),
    ("config-rotary-share-above-one", _config(partial_rotary_factor=2),
     r"partial_rotary_factor=2 must be in \(0, 1\]"),
    ("config-rope-not-object", _config(rope_parameters="yarn"), r"rope_parameters='yarn' is not an object"),
    ("config-rope-factor-zero",
     _config(rope_parameters={"rope_type": "linear", "factor": 0, "rope_theta": 1e4}),
     r"rope_parameters\['factor'\]=0 is not a valid RoPE setting \(a positive number\)"),
    ("config-model-type-list", _config(model_type=["llama"]), r"model_type=\['llama'\] is not a string"),
    ("config-not-json", _write("config.json", "{'model_type': 'llama'"), r"config\.json .*not valid JSON"),
    ("config-a-list", _write("config.json", "[1, 2]"), r"config\.json .*holds a JSON list"),
    ("config-not-utf8", _write("config.json", b'{"model_type": "\xff"}'), r"config\.json .*not UTF-8"),
    ("config-a-directory", lambda d: (os.remove(d / "config.json"), os.mkdir(d / "config.json")),
     r"config\.json .*is a directory"),
    ("tokenizer-not-json", _write("tokenizer.json", '{"version": "1.0", "model": '),
     r"tokenizer\.json is not a valid tokenizer\.json"),
    ("tokenizer-json-not-a-tokenizer", _write("tokenizer.json", '{"hello": "world"}'),
     r"tokenizer\.json is not a valid tokenizer\.json"),
    ("tokenizer-a-directory", lambda d: (os.remove(d / "tokenizer.json"), os.mkdir(d / "tokenizer.json")),
     r"tokenizer\.json is a directory"),
    ("tokenizer-config-not-json", _write("tokenizer_config.json", "{,}"),
     r"tokenizer_config\.json .*not valid JSON"),
    ("sentencepiece-model-garbage",
     lambda d: (os.remove(d / "tokenizer.json"), (d / "tokenizer.model").write_bytes(b"\x0a\xff" * 50)),
     r"tokenizer\.model: .*not a valid SentencePiece model"),
    ("index-not-json", _sharded(lambda i: "{oops"), r"index\.json .*not valid JSON"),
    ("index-without-weight-map", _sharded(lambda i: {"metadata": {}}), r"has no weight_map"),
    ("index-points-outside", _sharded(_index_escape), r"not a \*\.safetensors file name in the same"),
    ("index-lists-absent-tensor", _sharded(_index_missing_tensor),
     r"lists tensors their shard does not hold: model\.layers\.9"),
    ("shard-truncated", lambda d: (_sharded(lambda i: None)(d), _truncate_file(
        d / "model-00002-of-00002.safetensors")), r"model-00002-of-00002\.safetensors is truncated"),
]


def _truncate_file(path):
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) - 8])


@pytest.mark.parametrize("damage,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damaged_directory_fails_in_one_line(llama_dir, tmp_path, capsys, damage, pattern):
  d = tmp_path / "hf"
  shutil.copytree(llama_dir, d, symlinks=True)
  damage(d)
  out = tmp_path / "out"
  start = time.perf_counter()
  assert _main()(["hf2jax", "--hf", str(d), "--out", str(out)]) == 2
  assert time.perf_counter() - start < 20
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  import re
  assert re.search(pattern, lines[0]), lines[0]
  assert not out.exists() and sorted(os.listdir(tmp_path)) == ["hf"]


def _poison(d, values):
  tensors = safetensors_numpy.load_file(str(d / ST))
  for key, value in values.items():
    x = tensors[key].copy()
    x.reshape(-1)[:3] = value
    tensors[key] = x
  safetensors_numpy.save_file(tensors, str(d / ST), metadata={"format": "pt"})


def test_nan_and_inf_weights_convert_with_one_warning(llama_dir, tmp_path, capsys):
  d = tmp_path / "hf"
  shutil.copytree(llama_dir, d)
  _poison(d, {"model.layers.1.mlp.up_proj.weight": np.nan,
              "model.norm.weight": np.inf, "lm_head.weight": -np.inf})
  out = tmp_path / "out"
  with pytest.warns(UserWarning) as record:
    assert _main()(["hf2jax", "--hf", str(d), "--out", str(out)]) == 0
  messages = [str(w.message) for w in record if "NaN or infinite" in str(w.message)]
  assert len(messages) == 1 and "\n" not in messages[0]
  assert messages[0].startswith("3 of 21 tensors")
  for name, count in (("model.layers.1.mlp.up_proj.weight", "3 NaN"),
                      ("model.norm.weight", "3 inf"), ("lm_head.weight", "3 inf")):
    assert f"{name} ({count})" in messages[0]
  assert out.is_dir()


def test_launcher_prints_the_nan_warning_on_one_line(llama_dir, tmp_path):
  import subprocess
  import sys
  d = tmp_path / "hf"
  shutil.copytree(llama_dir, d)
  _poison(d, {"model.embed_tokens.weight": np.nan})
  root = os.path.join(os.path.dirname(__file__), "..")
  env = dict(os.environ, PYTHONPATH=os.path.abspath(root), JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, os.path.join(root, "launch", "convert.py"), "hf2jax",
                        "--hf", str(d), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0, run.stderr
  lines = [line for line in run.stderr.splitlines() if "NaN" in line]
  assert lines == [f"warning: 1 of 21 tensors in {d} hold NaN or infinite values: "
                   "model.embed_tokens.weight (3 NaN). The model will compute NaN; check the "
                   "source of the weights (a diverged run or a damaged file) before using it."]


def test_clean_directory_still_converts(llama_dir, tmp_path, recwarn):
  out = convert.hf_to_jaxslm(str(llama_dir), str(tmp_path / "out"))
  assert os.path.isdir(out)
  assert not [w for w in recwarn if "NaN" in str(w.message)]


def test_hf_dir_itself_a_symlink_loop(tmp_path):
  os.symlink("loop", tmp_path / "loop")
  with pytest.raises(UserError, match="symbolic link loop"):
    convert.hf_to_jaxslm(str(tmp_path / "loop"), str(tmp_path / "out"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "float8_e4m3fn"])
def test_nonfinite_counts_match_numpy(dtype, monkeypatch):
  """The chunked, sum-first scan against plain np.isnan / np.isinf counts,
  with huge finite values (whose sum overflows) and chunks of 1000."""
  import ml_dtypes
  from jaxslm.convert import checks
  monkeypatch.setattr(checks, "_CHUNK", 1000)
  dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
  big = float(ml_dtypes.finfo(dt).max)
  rng = np.random.default_rng(0)
  for nan, inf, huge in ((0, 0, 0), (0, 0, 50), (7, 0, 3), (0, 5, 0), (4, 9, 20)):
    x = rng.standard_normal(5000)
    idx = rng.permutation(x.size)
    x[idx[:huge]] = big
    x = x.astype(dt)
    if nan:
      x[idx[huge:huge + nan]] = np.nan
    if inf and dt != np.dtype(ml_dtypes.float8_e4m3fn):   # e4m3fn has no inf
      x[idx[huge + nan:huge + nan + inf]] = np.where(np.arange(inf) % 2, np.inf, -np.inf)
    ref = x.astype(np.float64)
    want = (int(np.isnan(ref).sum()), int(np.isinf(ref).sum()))
    assert checks.nonfinite(x.reshape(50, 100)) == want
  assert checks.nonfinite(np.array([1, 2], np.int64)) == (0, 0)


def test_unreadable_file_and_odd_tensor_names(tmp_path, monkeypatch):
  """Permission errors cannot be made as root, so `open` is made to refuse;
  a tensor name holding a newline would break the one-line message."""
  import errno

  from jaxslm import file_checks
  from jaxslm.convert import files
  (tmp_path / ST).write_bytes(b"\0" * 16)

  def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")
  with monkeypatch.context() as m:
    m.setattr(file_checks, "open", refuse, raising=False)
    with pytest.raises(UserError, match=r"model\.safetensors cannot be read \(permission denied\)"):
      files.SafetensorsReader(str(tmp_path))
  x = np.zeros(2, np.float32)
  safetensors_numpy.save_file({"a\nb": x}, str(tmp_path / ST))
  with pytest.raises(UserError, match=r"tensor 'a\\nb' has an empty name or one with control") as e:
    files.SafetensorsReader(str(tmp_path))
  assert "\n" not in str(e.value)


def test_shard_tensor_left_out_of_the_index_is_named(tmp_path):
  from jaxslm.convert import files
  x = np.arange(4, dtype=np.float32)
  safetensors_numpy.save_file({"a": x, "b": x + 1}, str(tmp_path / "model-00001-of-00001.safetensors"))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"a": "model-00001-of-00001.safetensors"}}))
  with pytest.warns(UserWarning, match=r"1 tensors in the shards .* not in its .*: b \(model-00001"):
    reader = files.SafetensorsReader(str(tmp_path))
  assert reader.keys() == ["a"] and np.array_equal(reader.get("a"), x)
