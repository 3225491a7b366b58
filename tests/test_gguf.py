"""GGUF import: tiny GGUF files written here with gguf.GGUFWriter (llama and
gemma3 layouts; F32, F16, Q8_0, Q4_0, Q4_1, Q4_K tensors; a byte-level BPE and
a SentencePiece tokenizer) converted by jaxslm and loaded by transformers' own
GGUF loader: logits, greedy ids and encodings agree. Crafted hostile files and
a bounded fuzz test: only `UserError`, quickly. The real checkpoints
(tools/fetch-gguf.sh) are checked when /work/models/gguf or $JAXSLM_GGUF_DIR exists."""

import io
import json
import os
import pathlib
import struct
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
hf_tokenizers = pytest.importorskip("tokenizers")

import jaxslm  # noqa: E402
from jaxslm import convert  # noqa: E402
from jaxslm.convert import gguf_arch, gguf_header  # noqa: E402
from jaxslm.convert.gguf import iter_tensors, supported_tensor_types  # noqa: E402
from jaxslm.errors import UserError  # noqa: E402
from jaxslm.models import Decoder  # noqa: E402

Q = gguf.GGMLQuantizationType
TOL = 1e-4
TEXTS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many "
         "clips in May. How many clips did Natalia sell altogether in April and May?\n#### 72",
         "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes.",
         "Ünïcode ✓ and tabs\tand  double  spaces. 12345 + 678 = 13023", " leading space",
         "line\n\nbreaks\r\n and 'quotes' don't", "emoji 🤗 and 中文"]
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DIMS = dict(d=64, layers=2, heads=4, kv=2, ff=256, ctx=128)
THETA = 10000.0
# Phi-3 here: RoPE on 3/4 of each head (Phi-4-mini style), no sliding window.
EXTRA = {"phi3": dict(partial_rotary_factor=0.75, sliding_window=None, pad_token_id=0),
         "qwen2": dict(use_sliding_window=False),
         "qwen3": dict(use_sliding_window=False, head_dim=32)}   # head_dim != d / heads


# ------------------------------------------------------------------ tokenizers


def _bpe_tokenizer() -> dict:
  """A byte-level BPE (GPT-2 style) trained on TEXTS, as GGUF metadata."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(
      vocab_size=360, special_tokens=specials, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  model = json.loads(tok.to_str())["model"]
  vocab = model["vocab"]
  tokens = sorted(vocab, key=vocab.get)
  assert [vocab[t] for t in tokens] == list(range(len(tokens)))
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return dict(model="gpt2", pre="qwen2", tokens=tokens, merges=merges,
              types=[3 if t in specials else 1 for t in tokens], bos=0, eos=2, pad=0,
              chat=CHAT)


def _sp_tokenizer(specials=("<start_of_turn>", "<end_of_turn>")) -> dict:
  """A SentencePiece BPE with byte fallback trained on TEXTS, as llama.cpp
  writes one: pieces, scores and types (3 control, 4 user-defined, 6 byte)."""
  import sentencepiece as spm
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TEXTS * 3), model_writer=model, vocab_size=400, model_type="bpe",
      byte_fallback=True, character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      user_defined_symbols=list(specials), add_dummy_prefix=True, split_digits=False,
      normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
  sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
  tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  types = [3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i)
           else 4 if tokens[i] in specials else 1 for i in range(len(tokens))]
  types = [3 if t == 4 else t for t in types]    # chat markers are control tokens
  return dict(model="llama", tokens=tokens, scores=[sp.get_score(i) for i in range(len(tokens))],
              types=types, bos=2, eos=1, pad=0, unk=3, chat=None)


# -------------------------------------------------------------------- writing


def _q4_k(shape, rng) -> np.ndarray:
  """Random Q4_K blocks (gguf cannot quantize to K-quants) with small scales."""
  rows, cols = shape
  blocks = rng.integers(0, 256, (rows, cols // 256, 144), dtype=np.uint8)
  blocks[..., 0:2] = np.frombuffer(np.float16(2e-3).tobytes(), np.uint8)
  blocks[..., 2:4] = np.frombuffer(np.float16(1e-3).tobytes(), np.uint8)
  return blocks.reshape(rows, -1)


def write_gguf(path, arch: str, meta: dict, tensors: dict, tok: dict, types: dict | None = None,
               seed: int = 0):
  """A GGUF file: `meta` {key: value} (ints as UINT32, floats as FLOAT32),
  `tensors` {name: float32 array}, `types` {name: GGMLQuantizationType}."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  w = gguf.GGUFWriter(str(path), arch)
  for k, v in meta.items():
    if isinstance(v, bool):
      w.add_bool(k, v)
    elif isinstance(v, int):
      w.add_uint32(k, v)
    elif isinstance(v, float):
      w.add_float32(k, v)
    else:
      w.add_string(k, v)
  w.add_tokenizer_model(tok["model"])
  if "pre" in tok:
    w.add_tokenizer_pre(tok["pre"])
  w.add_token_list(tok["tokens"])
  w.add_token_types(tok["types"])
  if "merges" in tok:
    w.add_token_merges(tok["merges"])
  if "scores" in tok:
    w.add_token_scores(tok["scores"])
  for key in ("bos", "eos", "pad", "unk"):
    if key in tok:
      w.add_uint32(f"tokenizer.ggml.{ {'pad': 'padding', 'unk': 'unknown'}.get(key, key)}"
                   "_token_id", tok[key])
  if tok.get("chat"):
    w.add_chat_template(tok["chat"])
  for name, x in tensors.items():
    qtype = (types or {}).get(name, Q.F32)
    if qtype == "as is":   # the type numpy's dtype gives (e.g. I32)
      w.add_tensor(name, x)
    elif qtype == Q.F32:
      w.add_tensor(name, np.asarray(x, np.float32))
    elif qtype == Q.F16:
      w.add_tensor(name, np.asarray(x, np.float16))
    elif qtype == Q.Q4_K:
      w.add_tensor(name, _q4_k(x.shape, rng), raw_dtype=qtype)
    else:
      w.add_tensor(name, gguf.quants.quantize(np.asarray(x, np.float32), qtype), raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def _permute(x, heads):   # llama.cpp's converter: rotate-half rows -> interleaved pairs
  return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(
      x.shape)


def _random_hf(arch: str, vocab: int, tie: bool):
  d, n = DIMS["d"], DIMS
  torch.manual_seed(0)
  if arch in ("llama", "qwen2", "qwen3", "phi3"):
    config = transformers.AutoConfig.for_model(
        arch, vocab_size=vocab, hidden_size=d, intermediate_size=n["ff"],
        num_hidden_layers=n["layers"], num_attention_heads=n["heads"],
        num_key_value_heads=n["kv"], rms_norm_eps=1e-5, max_position_embeddings=n["ctx"],
        rope_theta=THETA, tie_word_embeddings=tie, **EXTRA.get(arch, {}))
  else:   # Gemma 3: head_dim 256 (= transformers' default query_pre_attn_scalar), 6 layers
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=n["ff"], num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=256, rms_norm_eps=1e-6,
        max_position_embeddings=n["ctx"], rope_theta=1e6, sliding_window=8,
        query_pre_attn_scalar=256, tie_word_embeddings=True)
  model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def _gguf_tensors(model, arch: str) -> dict:
  """The model's state dict under GGUF names, laid out as llama.cpp writes it."""
  cfg = model.config
  inverse = {h: g for g, h in gguf_arch.NAMES[arch].items()}
  out = {}
  for name, x in model.state_dict().items():
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    key = name
    layer = None
    parts = name.split(".")
    if len(parts) > 2 and parts[2].isdigit():
      layer = parts[2]
      key = name.replace(f".{layer}.", ".{i}.", 1)
    g = inverse[key].replace("{i}", layer) if layer is not None else inverse[key]
    x = x.float().numpy()
    if arch == "llama" and ".attn_q." in g:
      x = _permute(x, cfg.num_attention_heads)
    elif arch == "llama" and ".attn_k." in g:
      x = _permute(x, cfg.num_key_value_heads)
    elif arch == "gemma3" and g.endswith("norm.weight"):
      x = x + 1   # llama.cpp stores Gemma's 1 + w
    out[g] = x
  return out


def _meta(arch: str, model, vocab: bool = True) -> dict:
  c = model.config
  m = {f"{arch}.context_length": c.max_position_embeddings,
       f"{arch}.block_count": c.num_hidden_layers, f"{arch}.embedding_length": c.hidden_size,
       f"{arch}.feed_forward_length": c.intermediate_size,
       f"{arch}.attention.head_count": c.num_attention_heads,
       f"{arch}.attention.head_count_kv": c.num_key_value_heads,
       f"{arch}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
       f"{arch}.rope.freq_base": THETA if arch != "gemma3" else 1e6,
       "general.name": f"tiny {arch}"}
  if vocab:
    m[f"{arch}.vocab_size"] = c.vocab_size
  if arch == "qwen3":
    m[f"{arch}.attention.key_length"] = m[f"{arch}.attention.value_length"] = c.head_dim
    m[f"{arch}.rope.dimension_count"] = c.head_dim
  elif arch != "gemma3":
    head = c.hidden_size // c.num_attention_heads
    m[f"{arch}.rope.dimension_count"] = int(head * EXTRA.get(arch, {}).get(
        "partial_rotary_factor", 1.0))
  else:
    m.update({f"{arch}.attention.key_length": 256, f"{arch}.attention.value_length": 256,
              f"{arch}.attention.sliding_window": c.sliding_window})
  return m


QUANT = {"token_embd.weight": Q.Q8_0, "output.weight": Q.F16}
for _i in range(6):
  QUANT.update({f"blk.{_i}.attn_q.weight": Q.F16, f"blk.{_i}.attn_k.weight": Q.Q8_0,
                f"blk.{_i}.attn_v.weight": Q.Q4_0, f"blk.{_i}.attn_output.weight": Q.Q4_1,
                f"blk.{_i}.ffn_gate.weight": Q.Q8_0, f"blk.{_i}.ffn_up.weight": Q.Q4_0,
                f"blk.{_i}.ffn_down.weight": Q.Q4_K})


def _hf_gguf(path):
  d, f = os.path.split(path)
  return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f,
                                                           dtype=torch.float32).eval()


def _logits_hf(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


_FORWARD = {}


def _logits_jax(cfg, params, ids):
  if cfg not in _FORWARD:   # jitted: one compile per model (eager is slower on 2 cores)
    _FORWARD[cfg] = jax.jit(lambda p, x: Decoder(cfg).apply({"params": p}, x))
  return np.asarray(_FORWARD[cfg](params, jnp.asarray(ids)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """{case: (gguf path, original transformers model)}: llama (BPE, untied head) in
  F32 and quantized; gemma3 (SentencePiece) quantized."""
  root = tmp_path_factory.mktemp("gguf")
  out = {}
  bpe, sp = _bpe_tokenizer(), _sp_tokenizer()
  llama = _random_hf("llama", len(bpe["tokens"]), tie=False)
  tensors = _gguf_tensors(llama, "llama")
  out["llama_f32"] = write_gguf(root / "f32" / "llama.gguf", "llama", _meta("llama", llama),
                                tensors, bpe), llama
  out["llama_q"] = write_gguf(root / "q" / "llama.gguf", "llama", _meta("llama", llama),
                              tensors, bpe, QUANT), llama
  gemma = _random_hf("gemma3", len(sp["tokens"]), tie=True)
  out["gemma3_q"] = write_gguf(root / "g" / "gemma.gguf", "gemma3",
                               _meta("gemma3", gemma, vocab=False), _gguf_tensors(gemma, "gemma3"),
                               sp, QUANT), gemma
  return out


@pytest.fixture(scope="module")
def converted(files, tmp_path_factory):
  root = tmp_path_factory.mktemp("gguf_jax")
  return {k: jaxslm.load(convert.gguf_to_jaxslm(p, str(root / k))) for k, (p, _) in files.items()}


@pytest.fixture(scope="module")
def ids():
  return np.random.default_rng(0).integers(0, 300, (2, 24)).tolist()   # 24 > window 8


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "phi3"])
def test_f32_files_of_other_architectures_equal_the_original_model(arch, ids, tmp_path):
  """Qwen2 (q/k/v biases), Qwen3 (q/k norms), Phi-3 (fused qkv and gate|up, partial RoPE)."""
  bpe = _bpe_tokenizer()
  model = _random_hf(arch, len(bpe["tokens"]), tie=arch != "phi3")
  path = write_gguf(tmp_path / "m.gguf", arch, _meta(arch, model), _gguf_tensors(model, arch),
                    bpe)
  cfg, params, _ = jaxslm.load(convert.gguf_to_jaxslm(path, str(tmp_path / "jax")))
  diff = np.abs(_logits_jax(cfg, params, ids) - _logits_hf(model, ids)).max()
  assert diff < TOL, (arch, diff)


def test_f32_llama_equals_the_original_model(files, converted, ids):
  """llama.cpp's q/k row permutation is undone: the F32 file computes the original logits."""
  cfg, params, _ = converted["llama_f32"]
  diff = np.abs(_logits_jax(cfg, params, ids) - _logits_hf(files["llama_f32"][1], ids)).max()
  assert diff < TOL, diff


@pytest.mark.parametrize("case", ["llama_q", "gemma3_q"])
def test_logits_and_greedy_ids_match_transformers_gguf_loader(files, converted, ids, case):
  """Logits to 1e-4 and transformers' 12 greedy tokens: jaxslm's argmax after each
  prefix (the full forward; for llama also jaxslm's KV-cache sampler)."""
  ref = _hf_gguf(files[case][0])
  cfg, params, _ = converted[case]
  diff = np.abs(_logits_jax(cfg, params, ids) - _logits_hf(ref, ids)).max()
  assert diff < TOL, (case, diff)
  prompt = ids[0][:12]
  ref.generation_config.eos_token_id = None   # run 12 tokens, EOS neither stops nor is masked
  with torch.no_grad():
    hf = ref.generate(torch.tensor([prompt]), generation_config=transformers.GenerationConfig(
        max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0))[0].tolist()
  greedy = _logits_jax(cfg, params, [hf, hf])[0].argmax(-1)   # the (2, 24) shape compiled above
  assert greedy[11:23].tolist() == hf[12:], case
  if case == "llama_q":
    ours = jaxslm.generate(cfg, params, [prompt], max_new_tokens=12, temperature=0.0,
                           eos_id=None)
    assert ours.completions[0].tokens == hf[12:]


def _reference_dequantize(path, info) -> np.ndarray:
  """transformers' own dequantizer (torch, written apart from gguf-py's) of a tensor's bytes."""
  from transformers.integrations.gguf import dequant
  raw = np.fromfile(path, np.uint8, count=info.nbytes, offset=info.offset)
  name = gguf_header.type_name(info.type)
  if name in ("F32", "F16"):
    return raw.view(np.float32 if name == "F32" else np.float16).astype(np.float32)
  if info.type not in dequant.GGML_BLOCK:   # e.g. Q5_0, Q5_1: gguf-py's is the only one here
    block, size = gguf_header.quant_sizes()[info.type]
    return gguf.quants.dequantize(raw.reshape(-1, size), info.type).reshape(-1)
  return dequant.dequantize(torch.from_numpy(raw.copy()), info.type).numpy()


def test_quantized_tensors_dequantize_as_an_independent_reference(files):
  """Each tensor read back equals transformers' dequantization of its raw blocks."""
  path = files["llama_q"][0]
  header = gguf_header.read_header(path)
  for name, x in iter_tensors(path):
    info = header.tensors[name]
    assert x.shape == info.shape and x.dtype == np.float32
    np.testing.assert_allclose(x.reshape(-1), _reference_dequantize(path, info), rtol=1e-6,
                               atol=1e-7, err_msg=name)
  kinds = {gguf_header.type_name(t.type) for t in header.tensors.values()}
  assert {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K"} <= kinds
  assert {"Q4_K", "Q6_K", "Q5_0", "BF16"} <= set(supported_tensor_types())


@pytest.mark.parametrize("case", ["llama_q", "gemma3_q"])
def test_tokenizer_encodes_as_transformers_does(files, converted, case):
  path = files[case][0]
  d, f = os.path.split(path)
  ref = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
  tok = converted[case].tokenizer
  for text in TEXTS:
    assert tok.encode(text, add_bos=None) == ref(text)["input_ids"], (case, text)
    assert tok.decode(tok.encode(text)) == text
  assert tok.add_bos_default == (case == "gemma3_q")


def test_sentencepiece_llama_vocabulary_without_merges(tmp_path):
  """A Llama-2-style vocabulary (tokenizer.ggml.model=llama, scores, no merges)."""
  sp = _sp_tokenizer(specials=())
  llama = _random_hf("llama", len(sp["tokens"]), tie=True)
  path = write_gguf(tmp_path / "llama.gguf", "llama", _meta("llama", llama),
                    _gguf_tensors(llama, "llama"), sp)
  tok = jaxslm.load(convert.gguf_to_jaxslm(path, str(tmp_path / "jax"))).tokenizer
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="llama.gguf")
  for text in TEXTS:
    assert tok.encode(text, add_bos=None) == ref(text)["input_ids"], text
  assert tok.add_bos_default and tok.bos_id == 2


def test_chat_template_samples(converted):
  loaded = converted["llama_q"]
  assert loaded.tokenizer.chat_template == CHAT
  text = jaxslm.sample(loaded, "What is 2 + 2?", chat=True, max_new_tokens=4)
  assert isinstance(text, str)
  ids = loaded.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
  assert ids[0] == loaded.tokenizer.special_tokens["<|im_start|>"]


@pytest.mark.parametrize("case", ["llama_q", "gemma3_q"])
def test_export_to_transformers(converted, ids, case, tmp_path):
  cfg, params, tok = converted[case]
  convert.jaxslm_to_hf(converted[case].path, str(tmp_path / "hf"))
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                           dtype=torch.float32).eval()
  assert back.config.model_type == {"llama_q": "llama", "gemma3_q": "gemma3_text"}[case]
  diff = np.abs(_logits_hf(back, ids) - _logits_jax(cfg, params, ids)).max()
  assert diff < TOL, (case, diff)
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  assert hf_tok(TEXTS[0])["input_ids"] == tok.encode(TEXTS[0], add_bos=None)


def test_config_from_metadata(converted):
  g = converted["gemma3_q"].model_cfg
  assert (g.n_layers, g.head_dim, g.sliding_window, g.global_layers) == (6, 256, 8, (5,))
  assert g.rope_theta == 1e6 and g.rope_local_theta == 1e4 and g.tie_embeddings
  assert g.vocab_size == 400   # the token list's length: the file has no gemma3.vocab_size
  l_ = converted["llama_q"].model_cfg
  assert (l_.n_heads, l_.n_kv_heads, l_.d_ff, l_.max_seq_len) == (4, 2, 256, 128)
  assert not l_.tie_embeddings


def test_llama3_rope_scaling_is_recovered_from_rope_freqs():
  factors = gguf_arch.llama3_factors(64, 500000.0, 32.0, 1.0, 4.0, 8192)
  got = gguf_arch.llama3_from_freqs(factors.astype(np.float32), 64, 500000.0, "x.gguf")
  assert got == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
  with pytest.raises(UserError, match="rope_freqs"):
    gguf_arch.llama3_from_freqs(np.linspace(1, 3, 32), 64, 500000.0, "x.gguf")


# ------------------------------------------------------- bad but well-formed files


@pytest.fixture(scope="module")
def llama_parts():
  bpe = _bpe_tokenizer()
  model = _random_hf("llama", len(bpe["tokens"]), tie=False)
  return model, _gguf_tensors(model, "llama"), bpe


def _convert(tmp_path, meta, tensors, tok, types=None, arch="llama"):
  path = write_gguf(tmp_path / "m.gguf", arch, meta, tensors, tok, types)
  return convert.gguf_to_jaxslm(path, str(tmp_path / "out"))


def test_missing_metadata_key_is_named(llama_parts, tmp_path):
  model, tensors, tok = llama_parts
  meta = _meta("llama", model)
  del meta["llama.block_count"]
  with pytest.raises(UserError, match="'llama.block_count'"):
    _convert(tmp_path, meta, tensors, tok)
  assert not os.path.exists(tmp_path / "out")


def test_unsupported_architecture_lists_supported(llama_parts, tmp_path):
  model, tensors, tok = llama_parts
  with pytest.raises(UserError, match="gemma3, llama, phi3, qwen2, qwen3"):
    _convert(tmp_path, {}, tensors, tok, arch="bloom")


def test_unsupported_tensor_type_lists_supported(llama_parts, tmp_path):
  model, tensors, tok = llama_parts
  # An I32 norm: a type gguf.quants cannot dequantize.
  with pytest.raises(UserError, match=r"type I32.*supported types: F32, F16"):
    _convert(tmp_path, _meta("llama", model), dict(tensors, **{
        "blk.0.attn_norm.weight": np.ones(64, np.int32)}), tok,
        {"blk.0.attn_norm.weight": "as is"})
  assert not os.path.exists(tmp_path / "out")


def test_shape_contradicting_metadata(llama_parts, tmp_path):
  model, tensors, tok = llama_parts
  bad = dict(tensors, **{"blk.1.ffn_up.weight": tensors["blk.1.ffn_up.weight"][:128]})
  with pytest.raises(UserError, match=r"'blk.1.ffn_up.weight' has shape \[128, 64\].*\[256, 64\]"):
    _convert(tmp_path, _meta("llama", model), bad, tok)


def test_missing_and_unexpected_tensors(llama_parts, tmp_path):
  model, tensors, tok = llama_parts
  bad = {k: v for k, v in tensors.items() if k != "blk.1.attn_v.weight"}
  bad["blk.7.attn_v.weight"] = tensors["blk.1.attn_v.weight"]
  with pytest.raises(UserError, match=r"missing tensors blk.1.attn_v.weight.*unexpected "
                                      r"tensors blk.7.attn_v.weight"):
    _convert(tmp_path, _meta("llama", model), bad, tok)


def test_nan_weights_convert_with_one_warning(llama_parts, tmp_path):
  model, tensors, tok = llama_parts
  x = tensors["blk.0.ffn_gate.weight"].copy()
  x[0, 0] = np.nan
  with pytest.warns(UserWarning, match=r"1 tensors hold NaN.*blk.0.ffn_gate.weight") as record:
    _convert(tmp_path, _meta("llama", model), dict(tensors, **{"blk.0.ffn_gate.weight": x}), tok)
  assert len([w for w in record if "NaN" in str(w.message)]) == 1


# ------------------------------------------------------------- hostile bytes


def _s(b: bytes) -> bytes:
  return struct.pack("<Q", len(b)) + b


def _file(n_tensors=0, n_kv=0, body=b"", version=3, magic=b"GGUF") -> bytes:
  return magic + struct.pack("<IQQ", version, n_tensors, n_kv) + body


def _kv(key: bytes, vtype: int, payload: bytes) -> bytes:
  return _s(key) + struct.pack("<I", vtype) + payload


def _tinfo(name: bytes, dims, ttype=0, offset=0) -> bytes:
  return (_s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
          + struct.pack("<IQ", ttype, offset))


def _pad(b: bytes, align=32) -> bytes:
  return b + b"\0" * (-len(b) % align)


HOSTILE = {
    "an array of 2^63 strings (49 bytes)": (
        _file(n_kv=1, body=_kv(b"a", 9, struct.pack("<IQ", 8, 2**63))), "length of array"),
    "2^62 tensors": (_file(n_tensors=2**62), "tensor count"),
    "2^62 key/values": (_file(n_kv=2**62), "key/value count"),
    "a key longer than the file": (_file(n_kv=1, body=struct.pack("<Q", 60_000) + b"a" * 16),
                                   "needs 60000 bytes"),
    "a string value longer than the file": (
        _file(n_kv=1, body=_kv(b"k", 8, struct.pack("<Q", 2**40) + b"x")), "needs"),
    "a tensor past the end": (_file(1, body=_tinfo(b"w", [32], 0, 0)), "past the end"),
    "a tensor offset past the end": (
        _pad(_file(1, body=_tinfo(b"w", [8], 0, 2**40))) + b"\0" * 32, "past the end"),
    "a dimension product that overflows": (
        _file(1, body=_tinfo(b"w", [2**32, 2**32, 2**32])), "overflows"),
    "a zero dimension": (_file(1, body=_tinfo(b"w", [0])), "each must be in"),
    "five dimensions": (_file(1, body=_tinfo(b"w", [1] * 5)), "5 dimensions"),
    "an unknown tensor type": (_file(1, body=_tinfo(b"w", [32], 99)), "unknown tensor type 99"),
    "a row not a whole block": (_file(1, body=_tinfo(b"w", [33], 8)), "block size 32"),
    "a misaligned offset": (_pad(_file(1, body=_tinfo(b"w", [4], 0, 4))) + b"\0" * 64,
                            "not a multiple of the alignment"),
    "overlapping tensors": (
        _pad(_file(2, body=_tinfo(b"a", [16]) + _tinfo(b"b", [16], 0, 32))) + b"\0" * 96,
        "overlaps"),
    "a duplicate tensor name": (
        _pad(_file(2, body=_tinfo(b"a", [8]) + _tinfo(b"a", [8], 0, 32))) + b"\0" * 64,
        "appears twice"),
    "a duplicate key": (_file(n_kv=2, body=_kv(b"k", 4, b"\1\0\0\0") * 2), "appears twice"),
    "an alignment that is not a power of two": (
        _file(n_kv=1, body=_kv(b"general.alignment", 4, struct.pack("<I", 24))), "power of two"),
    "an unknown value type": (_file(n_kv=1, body=_kv(b"k", 13, b"")), "value type 13"),
    "arrays nested too deep": (
        _file(n_kv=1, body=_kv(b"k", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1)
                               + struct.pack("<IQ", 0, 0))), "nests arrays"),
    "a key that is not UTF-8": (_file(n_kv=1, body=_kv(b"\xff\xfe", 4, b"\0" * 4)), "not UTF-8"),
    "a wrong magic": (b"GGML" + b"\0" * 20, "magic"),
    "version 1": (_file(version=1), "version 1 is not supported"),
    "a big-endian file": (_file(version=3 << 24), "big-endian"),
    "an empty file": (b"", "the magic needs 4 bytes"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_is_refused_quickly(case, tmp_path):
  data, message = HOSTILE[case]
  path = tmp_path / "bad.gguf"
  path.write_bytes(data)
  start = time.perf_counter()
  with pytest.raises(UserError, match=message) as e:
    gguf_header.read_header(path)
  assert time.perf_counter() - start < 0.5
  assert str(path) in str(e.value)
  with pytest.raises(UserError):   # the conversion refuses it before gguf.GGUFReader runs
    convert.gguf_to_jaxslm(str(path), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> bytes:
  """A valid GGUF of a few hundred bytes: metadata of each kind and three tensors."""
  path = tmp_path_factory.mktemp("small") / "s.gguf"
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_uint32("llama.block_count", 1)
  w.add_float32("llama.rope.freq_base", 1e4)
  w.add_bool("tokenizer.ggml.add_bos_token", True)
  w.add_array("tokenizer.ggml.tokens", ["a", "bc", "<s>"])
  w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
  rng = np.random.default_rng(0)
  w.add_tensor("f32", rng.standard_normal((2, 8)).astype(np.float32))
  w.add_tensor("f16", rng.standard_normal(16).astype(np.float16))
  w.add_tensor("q8", gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), Q.Q8_0),
               raw_dtype=Q.Q8_0)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path.read_bytes()


def _read_all(data: bytes) -> dict:
  with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
    f.write(data)
  try:
    return dict(iter_tensors(f.name))
  finally:
    os.unlink(f.name)


def test_truncation_anywhere_is_a_user_error(small_file):
  """Every prefix of the file: UserError, or (cutting only trailing padding) the same tensors."""
  full = _read_all(small_file)
  end = max(t.offset + t.nbytes for t in _header_of(small_file).tensors.values())
  for cut in range(len(small_file)):
    if cut >= end:
      got = _read_all(small_file[:cut])
      assert all(np.array_equal(got[k], full[k]) for k in full)
      continue
    with pytest.raises(UserError):
      _read_all(small_file[:cut])


def _header_of(data: bytes):
  with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
    f.write(data)
  try:
    return gguf_header.read_header(f.name)
  finally:
    os.unlink(f.name)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(st.data())
def test_fuzzed_files_give_tensors_or_user_error(small_file, data):
  """Random byte flips and truncations: either a UserError, or tensors that are
  exactly the bytes the checked header points at; never another exception."""
  buf = bytearray(small_file)
  for _ in range(data.draw(st.integers(1, 4))):
    pos = data.draw(st.integers(0, len(buf) - 1))
    buf[pos] = data.draw(st.integers(0, 255))
  if data.draw(st.booleans()):
    del buf[data.draw(st.integers(0, len(buf))):]
  try:
    got = _read_all(bytes(buf))
  except UserError:
    return
  header = _header_of(bytes(buf))
  for name, info in header.tensors.items():
    raw = np.frombuffer(bytes(buf), np.uint8, count=info.nbytes, offset=info.offset)
    block, size = gguf_header.quant_sizes()[info.type]
    want = gguf.quants.dequantize(raw.reshape(-1, info.dims[0] // block * size), info.type)
    np.testing.assert_array_equal(got[name], np.asarray(want, np.float32).reshape(info.shape))


# -------------------------------------------------------------- the real files


REAL = os.environ.get("JAXSLM_GGUF_DIR", "/work/models/gguf")
SMOL, GEMMA = "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"


@pytest.mark.skipif(not os.path.isdir(REAL), reason=f"no real GGUF files in {REAL}")
@pytest.mark.parametrize("name", [SMOL, GEMMA])
def test_real_file_header_and_config(name):
  path = os.path.join(REAL, name)
  if not os.path.isfile(path):
    pytest.skip(f"{path} is absent (tools/fetch-gguf.sh downloads it)")
  header, hf, cfg = convert.gguf.read_config(path)
  if name == SMOL:
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (
        30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0
  else:
    assert (cfg.n_layers, cfg.d_model, cfg.dim_per_head, cfg.sliding_window) == (18, 640, 256, 512)
    assert cfg.global_layers == (5, 11, 17) and cfg.vocab_size == 262144
  smallest = {}
  for t in header.tensors.values():   # the smallest tensor of each type (up to 4 MB)
    kind = gguf_header.type_name(t.type)
    if t.nbytes < 4 << 20 and (kind not in smallest or t.nbytes < smallest[kind].nbytes):
      smallest[kind] = t
  assert len(smallest) >= 2
  from jaxslm.convert.gguf import _dequantize
  for t in smallest.values():
    x = _dequantize(header, t, None)
    np.testing.assert_allclose(x.reshape(-1), _reference_dequantize(path, t), rtol=1e-6,
                               atol=1e-7, err_msg=t.name)


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(st.data())
def test_fuzzed_metadata_gives_a_config_and_tokenizer_or_user_error(files, data):
  """Byte flips in the metadata and tensor infos of a whole model file: reading
  the config and building the tokenizer ends in a UserError or succeeds."""
  from jaxslm.convert import gguf_tokenizer
  original = pathlib.Path(files["llama_q"][0]).read_bytes()
  end = _header_of(original).data_offset
  buf = bytearray(original)
  for _ in range(data.draw(st.integers(1, 3))):
    buf[data.draw(st.integers(24, end - 1))] = data.draw(st.integers(0, 255))
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "m.gguf")
    pathlib.Path(path).write_bytes(bytes(buf))
    try:
      header, hf, cfg = convert.gguf.read_config(path)
      gguf_tokenizer.tokenizer_from_gguf(header.metadata, path, cfg.vocab_size)
    except UserError:
      pass


def test_launcher_gguf2jax(files, tmp_path, capsys):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "launch_convert", os.path.join(os.path.dirname(__file__), "..", "launch", "convert.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = str(tmp_path / "ckpt")
  assert module.main(["gguf2jax", "--gguf", files["llama_q"][0], "--out", out,
                      "--dtype", "bfloat16"]) == 0
  assert jaxslm.load(out).model_cfg.dtype == "bfloat16"
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(HOSTILE["an array of 2^63 strings (49 bytes)"][0])
  assert module.main(["gguf2jax", "--gguf", str(bad), "--out", str(tmp_path / "x")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "bad.gguf" in err and "length of array" in err
