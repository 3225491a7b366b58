"""Fuzzing the safetensors reader (`jaxslm.convert.files.SafetensorsReader`,
which validates with `jaxslm.convert.safetensors_header`).

A small valid file (several dtypes, a zero-size tensor, metadata) is
damaged three ways: cut at every boundary between its regions, its header
mutated field by field, random bytes flipped anywhere. Property: the reader
returns exactly the tensors the `safetensors` library reads from the same
bytes (the reference; for an intact file, the tensors written), or raises
`UserError`; never another exception, never slower than a bound. Whatever
the reader accepts, the library accepts too: jaxslm is never the laxer of
the two. Bounded: a fixed number of derandomized examples, a few seconds."""

import json
import os
import struct
import tempfile
import time

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
safetensors = pytest.importorskip("safetensors")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.numpy import save as save_bytes  # noqa: E402

from jaxslm.convert import files  # noqa: E402
from jaxslm.convert.safetensors_header import BITS  # noqa: E402
from jaxslm.errors import UserError  # noqa: E402

SECONDS = 2.0     # any single read, damaged or not
FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _tensors():
  rng = np.random.default_rng(0)
  return {"w": rng.standard_normal((3, 4)).astype(np.float32),
          "h": rng.standard_normal((5,)).astype(np.float16),
          "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
          "d": rng.standard_normal((2,)).astype(np.float64),
          "mask": np.array([True, False, True]),
          "bytes": np.arange(7, dtype=np.uint8),
          "i32": np.array([-1, 2**31 - 1], np.int32),
          "empty": np.zeros((0, 3), np.float32)}


TENSORS = _tensors()
GOOD = save_bytes(TENSORS, metadata={"format": "pt"})
N = struct.unpack("<Q", GOOD[:8])[0]
HEADER = json.loads(GOOD[8:8 + N])
DATA = GOOD[8 + N:]


def _ours(raw: bytes):
  """{name: array} as the converter reads the file, or the UserError."""
  with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
      f.write(raw)
    start = time.perf_counter()
    try:
      with files.SafetensorsReader(d) as reader:
        out = {k: np.array(reader.get(k)) for k in reader.keys()}
    except UserError as e:
      out = e
    assert time.perf_counter() - start < SECONDS
  return out


def _reference(raw: bytes):
  """{name: array} as the safetensors library reads the bytes, or None if it refuses them."""
  from safetensors import safe_open
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "x.safetensors")
    with open(path, "wb") as f:
      f.write(raw)
    try:
      with safe_open(path, framework="numpy") as f:
        return {k: np.array(f.get_tensor(k)) for k in f.keys()}
    except Exception:   # the library's own error types (and numpy's for odd dtypes)
      return None


def _same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(
      a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
      for k in a)


def _check(raw: bytes):
  """The property; returns what the reader gave."""
  got = _ours(raw)   # any exception but UserError fails the test here
  if not isinstance(got, UserError):
    ref = _reference(raw)
    assert ref is not None, "jaxslm accepted bytes the safetensors library refuses"
    assert _same(got, ref)
  else:
    assert "\n" not in str(got) and "model.safetensors" in str(got)
  return got


def test_intact_file_reads_back_exactly():
  assert _same(_ours(GOOD), TENSORS)


def _boundaries() -> list[int]:
  cuts = {0, 1, 7, 8, 9, 8 + N // 2, 8 + N - 1, 8 + N, len(GOOD) - 1}
  for info in HEADER.values():
    if isinstance(info, dict) and "data_offsets" in info:
      for off in info["data_offsets"]:
        cuts.update({8 + N + off - 1, 8 + N + off, 8 + N + off + 1})
  return sorted(c for c in cuts if 0 <= c < len(GOOD))


def test_truncation_at_every_region_boundary_is_refused():
  cuts = _boundaries()
  assert len(cuts) > 20
  for cut in cuts:
    got = _check(GOOD[:cut])
    assert isinstance(got, UserError), f"a file cut at byte {cut} of {len(GOOD)} was read"


def _json_values():
  scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
  return st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)


_NAMES = sorted(k for k in HEADER if k != "__metadata__")
_SIZE = len(DATA)


@st.composite
def _mutated_header(draw) -> bytes:
  header = json.loads(json.dumps(HEADER))
  name = draw(st.sampled_from(_NAMES))
  field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "swap", "shift",
                                "drop", "metadata", "duplicate", "rename"]))
  entry = header[name]
  if field == "dtype":
    entry["dtype"] = draw(st.sampled_from(sorted(BITS) + ["F33", "f32", "", "int8"])
                          | _json_values())
  elif field == "shape":
    entry["shape"] = draw(st.lists(st.integers(-3, 2**40) | st.sampled_from([0, 1, 2, 3, 4]),
                                   max_size=4) | _json_values())
  elif field == "data_offsets":
    entry["data_offsets"] = draw(st.lists(st.integers(-5, _SIZE + 50), max_size=3)
                                 | _json_values())
  elif field == "entry":
    header[name] = draw(_json_values())
  elif field == "swap":   # two tensors exchange (or share) their offsets
    other = draw(st.sampled_from(_NAMES))
    a, b = entry["data_offsets"], header[other]["data_offsets"]
    entry["data_offsets"] = b
    if draw(st.booleans()):
      header[other]["data_offsets"] = a
  elif field == "shift":
    k = draw(st.integers(-16, 16))
    entry["data_offsets"] = [o + k for o in entry["data_offsets"]]
  elif field == "drop":
    del header[name][draw(st.sampled_from(sorted(entry)))]
  elif field == "metadata":
    header["__metadata__"] = draw(_json_values())
  elif field == "rename":
    header[draw(st.text(max_size=8))] = header.pop(name)
  text = json.dumps(header)
  if field == "duplicate":   # the same name twice in one object
    text = text[:-1] + f", {json.dumps(name)}: {json.dumps(draw(st.sampled_from([entry, HEADER[_NAMES[0]]])))}}}"
  raw = text.encode()
  if draw(st.booleans()):
    raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw + DATA


@FUZZ
@given(_mutated_header())
def test_mutated_headers(raw):
  _check(raw)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)),
                min_size=1, max_size=4))
def test_random_byte_flips(flips):
  raw = bytearray(GOOD)
  for pos, mask in flips:
    raw[pos] ^= mask
  got = _check(bytes(raw))
  if all(pos >= 8 + N for pos, _ in flips) and not isinstance(got, UserError):
    assert got.keys() == TENSORS.keys()   # data bytes changed: values may, names may not


@FUZZ
@given(st.integers(0, 2**64 - 1))
def test_any_header_length(n):
  _check(struct.pack("<Q", n) + GOOD[8:])


@settings(max_examples=40, derandomize=True, database=None, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes(raw):
  _check(raw)


# ------------------------------------------------------------------ config.json


@pytest.fixture(scope="module")
def exported_llama(tmp_path_factory):
  """A tiny Llama directory made with numpy alone (random weights, a
  word-level tokenizer.json), its config.json with llama3 RoPE scaling so
  those settings can be fuzzed too."""
  from safetensors.numpy import save_file
  from tokenizers import Tokenizer, models
  d, inner, vocab, heads, kv, hd = 32, 64, 64, 4, 2, 8
  config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": d,
            "intermediate_size": inner, "num_hidden_layers": 2, "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": hd, "vocab_size": vocab,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
            "tie_word_embeddings": False, "attention_bias": False, "eos_token_id": 0,
            "rope_scaling": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}
  shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,),
            "lm_head.weight": (vocab, d)}
  for i in range(2):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                   p + "self_attn.q_proj.weight": (heads * hd, d),
                   p + "self_attn.k_proj.weight": (kv * hd, d),
                   p + "self_attn.v_proj.weight": (kv * hd, d),
                   p + "self_attn.o_proj.weight": (d, heads * hd),
                   p + "mlp.gate_proj.weight": (inner, d), p + "mlp.up_proj.weight": (inner, d),
                   p + "mlp.down_proj.weight": (d, inner)})
  rng = np.random.default_rng(0)
  out = tmp_path_factory.mktemp("fuzz") / "hf"
  out.mkdir()
  save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()},
            str(out / "model.safetensors"))
  words = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "a": 1}, unk_token="<|endoftext|>"))
  words.save(str(out / "tokenizer.json"))
  (out / "config.json").write_text(json.dumps(config))
  return str(out), config


_CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "rope_theta", "max_position_embeddings", "tie_word_embeddings", "model_type",
                "rope_scaling", "rope_scaling.factor", "rope_scaling.low_freq_factor",
                "rope_scaling.high_freq_factor", "rope_scaling.original_max_position_embeddings",
                "rope_scaling.rope_type", "attention_bias", "text_config"]


@settings(max_examples=20, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(_CONFIG_KEYS),
       value=_json_values() | st.integers(-1, 2**64) | st.floats(1e-6, 1e6)
       | st.sampled_from([0, 1, 2, 3, 8, 32, 64, 10**9]))
def test_mutated_config_converts_or_fails_in_one_line(exported_llama, key, value):
  """Property: hf_to_jaxslm converts, or raises UserError naming config.json,
  within a bound; never another exception, never a hang."""
  import shutil

  from jaxslm import convert
  src, config = exported_llama
  config = json.loads(json.dumps(config))
  if "." in key:
    outer, inner = key.split(".")
    config[outer][inner] = value
  else:
    config[key] = value
  with tempfile.TemporaryDirectory() as tmp:
    d = os.path.join(tmp, "hf")
    shutil.copytree(src, d)
    with open(os.path.join(d, "config.json"), "w") as f:
      json.dump(config, f)
    start = time.perf_counter()
    try:
      convert.hf_to_jaxslm(d, os.path.join(tmp, "out"))
      hypothesis.event("converted")
    except UserError as e:
      hypothesis.event("UserError")
      assert "\n" not in str(e)
      assert not os.path.exists(os.path.join(tmp, "out"))
    assert time.perf_counter() - start < 30
