"""Hugging Face <-> jaxslm conversion: logit and greedy-generation parity with
transformers for tiny random models of every family (no downloads), the round
trip back to transformers, LoRA export, tokenizer.json, and errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
hf_tokenizers = pytest.importorskip("tokenizers")

import jaxslm  # noqa: E402
from jaxslm import convert, lora, tokenizers  # noqa: E402
from jaxslm.errors import UserError  # noqa: E402
from jaxslm.models import Decoder  # noqa: E402

VOCAB = 320          # the test tokenizer has 300 ids (256 bytes, <|endoftext|>, merges)
TOL = 1e-4
COMMON = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=None)
LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                   rms_norm_eps=1e-6, **COMMON)
# Gemma 3: sliding-window layers 0, 2 (window 8 < 24 tokens) and global layers 1, 3,
# local RoPE base 1e4, global 1e6 with linear scaling, q.k / sqrt(32) (head_dim 24).
GEMMA3_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                    query_pre_attn_scalar=32, sliding_window=8, sliding_window_pattern=2,
                    max_position_embeddings=128, rope_theta=1e6, rope_local_base_freq=1e4,
                    rope_scaling={"rope_type": "linear", "factor": 8.0})
TEXTS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many "
         "clips in May. How many clips did Natalia sell altogether in April and May?\n#### 72",
         "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes.",
         "Ünïcode ✓ and tabs\tand  double  spaces. 12345 + 678 = 13023"] * 4
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def _hf_configs():
  return {
      "gpt2": transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                      activation_function="gelu_new", **COMMON),
      # llama3 RoPE scaling with a short original context, so it changes the frequencies.
      "llama": transformers.LlamaConfig(
          **LLAMA_SHAPE, tie_word_embeddings=False, rope_theta=10000.0,
          rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
      "qwen2": transformers.Qwen2Config(**LLAMA_SHAPE, tie_word_embeddings=True,
                                        rope_theta=1000000.0),
      "mistral": transformers.MistralConfig(**LLAMA_SHAPE, sliding_window=8,
                                            tie_word_embeddings=False),
      # jaxslm's own GPT-style presets export as GPT-NeoX (sequential residual, full rotary).
      "gpt_neox": transformers.GPTNeoXConfig(
          hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
          max_position_embeddings=128, hidden_act="gelu_new", use_parallel_residual=False,
          rotary_pct=1.0, rotary_emb_base=10000.0, tie_word_embeddings=False, **COMMON),
      # q/k RMSNorm per head; an explicit head_dim (4 x 24 != 64).
      "qwen3": transformers.Qwen3Config(**LLAMA_SHAPE, head_dim=24, tie_word_embeddings=True,
                                        rope_theta=1000000.0),
      # Parallel attention + MLP from one LayerNorm, half the head rotated, lm_head bias.
      "phi": transformers.PhiConfig(
          hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=128, hidden_act="gelu_new",
          partial_rotary_factor=0.5, tie_word_embeddings=False, **COMMON),
      # Fused qkv_proj and gate_up_proj; 3/4 of each head rotated (as Phi-4-mini).
      "phi3": transformers.Phi3Config(**LLAMA_SHAPE, partial_rotary_factor=0.75,
                                      tie_word_embeddings=False),
      "gemma3": transformers.Gemma3TextConfig(**GEMMA3_SHAPE, **COMMON),
  }


def _byte_bpe():
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(TEXTS, trainer)
  return tok


def _save_tokenizer(directory):
  _byte_bpe().save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
               "chat_template": CHAT_TEMPLATE}, f)


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


def _jax_logits(cfg, params, tokens):
  return np.asarray(Decoder(cfg).apply({"params": params}, jnp.asarray(tokens)))


@pytest.fixture(scope="module")
def tokens():
  return np.random.default_rng(0).integers(0, VOCAB, (2, 24)).tolist()  # 24 > window 8


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2", "mistral", "gpt_neox",
                                        "qwen3", "phi", "phi3", "gemma3"])
def converted(request, tmp_path_factory):
  """A random transformers model of the family (every weight perturbed, so
  biases and norm scales are not zeros and ones), saved, then converted."""
  family = request.param
  root = tmp_path_factory.mktemp(family)
  model, hf_dir = _random_hf_model(_hf_configs()[family], root)
  out = convert.hf_to_jaxslm(hf_dir, str(root / "jax"))
  return dict(family=family, model=model, hf_dir=hf_dir, ckpt=out, root=root,
              loaded=jaxslm.load(out))


def _random_hf_model(config, root):
  """(model, saved directory with a tokenizer) with every weight perturbed."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.generation_config.eos_token_id = None
  hf_dir = str(root / "hf")
  model.save_pretrained(hf_dir)
  _save_tokenizer(hf_dir)
  return model, hf_dir


def test_logits_match_transformers(converted, tokens):
  cfg, params, _ = converted["loaded"]
  diff = np.abs(_jax_logits(cfg, params, tokens) - _hf_logits(converted["model"], tokens)).max()
  assert diff < TOL, (converted["family"], diff)


def test_greedy_generation_matches_transformers(converted, tokens):
  cfg, params, _ = converted["loaded"]
  prompt = tokens[0][:12]
  with torch.no_grad():
    hf = converted["model"].generate(torch.tensor([prompt]), max_new_tokens=20,
                                     min_new_tokens=20, do_sample=False, pad_token_id=0)
  ours = jaxslm.generate(cfg, params, [prompt], max_new_tokens=20, temperature=0.0, eos_id=None)
  assert ours.completions[0].tokens == hf[0, len(prompt):].tolist(), converted["family"]


def test_round_trip_back_to_transformers(converted, tokens):
  out = convert.jaxslm_to_hf(converted["ckpt"], str(converted["root"] / "export"))
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(back) is type(converted["model"])
  diff = np.abs(_hf_logits(back, tokens) - _hf_logits(converted["model"], tokens)).max()
  assert diff < TOL, (converted["family"], diff)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  ours = converted["loaded"].tokenizer
  assert tok(TEXTS[0], add_special_tokens=False)["input_ids"] == ours.encode(TEXTS[0])
  assert tok.eos_token_id == ours.eos_id and tok.chat_template == CHAT_TEMPLATE


def test_converted_meta_keeps_special_tokens_and_chat_template(converted):
  tok = converted["loaded"].tokenizer
  assert isinstance(tok, tokenizers.HFTokenizer)
  assert tok.eos_id == tok.special_tokens["<|endoftext|>"] and tok.chat_template == CHAT_TEMPLATE
  model_type = converted["loaded"].meta["hf"]["model_type"]
  assert model_type == {"gemma3": "gemma3_text"}.get(converted["family"], converted["family"])


def test_lora_adapted_model_exports_merged(converted, tokens, tmp_path):
  if converted["family"] != "qwen2":
    pytest.skip("one family is enough: merging is family-independent")
  cfg, params, tok = converted["loaded"]
  adapted = lora.add_adapter(params, lora.LoraConfig(rank=4, targets="all"),
                             jax.random.PRNGKey(1))
  keys = iter(jax.random.split(jax.random.PRNGKey(2), 64))
  adapted = lora.map_with_paths(adapted, lambda _, x: x.replace(
      b=tuple(0.1 * jax.random.normal(next(keys), b.shape) for b in x.b))
      if isinstance(x, lora.LoraWeight) else x)
  ours = _jax_logits(cfg, adapted, tokens)
  assert np.abs(ours - _jax_logits(cfg, params, tokens)).max() > 1e-2   # B is not zero
  out = convert.export(cfg, adapted, tok, str(tmp_path / "merged"),
                       hf_meta=converted["loaded"].meta["hf"])
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert np.abs(_hf_logits(back, tokens) - ours).max() < TOL


def test_bfloat16_conversion(converted, tmp_path, tokens):
  if converted["family"] != "llama":
    pytest.skip("dtype handling is family-independent")
  out = convert.hf_to_jaxslm(converted["hf_dir"], str(tmp_path / "bf16"), dtype="bfloat16")
  cfg, params, _ = jaxslm.load(out)
  assert cfg.dtype == cfg.param_dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  diff = np.abs(_jax_logits(cfg, params, tokens) - _hf_logits(converted["model"], tokens))
  assert diff.max() < 0.1
  exported = convert.jaxslm_to_hf(out, str(tmp_path / "bf16_hf"))
  assert json.load(open(os.path.join(exported, "config.json")))["torch_dtype"] == "bfloat16"


def test_sharded_safetensors_are_read_and_written(converted, tmp_path, tokens):
  if converted["family"] != "mistral":
    pytest.skip("file handling is family-independent")
  sharded = convert.export(*converted["loaded"], str(tmp_path / "sharded"),
                           hf_meta=converted["loaded"].meta["hf"], max_shard_bytes=100_000)
  assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 2
  back = convert.hf_to_jaxslm(sharded, str(tmp_path / "from_sharded"))
  cfg, params, _ = jaxslm.load(back)
  diff = np.abs(_jax_logits(cfg, params, tokens) - _hf_logits(converted["model"], tokens)).max()
  assert diff < TOL


def test_phi_qk_layernorm_and_tied_head_bias(tmp_path, tokens):
  """Phi's optional per-head q/k LayerNorm, and a tied head that keeps its bias."""
  config = transformers.PhiConfig(**{**_hf_configs()["phi"].to_dict(), "qk_layernorm": True,
                                     "tie_word_embeddings": True, "num_key_value_heads": 4})
  model, hf_dir = _random_hf_model(config, tmp_path)
  cfg, params, _ = jaxslm.load(convert.hf_to_jaxslm(hf_dir, str(tmp_path / "jax")))
  assert cfg.qk_norm and cfg.tie_embeddings and cfg.lm_head_bias
  assert set(params["lm_head"]) == {"bias"}
  assert np.abs(_jax_logits(cfg, params, tokens) - _hf_logits(model, tokens)).max() < TOL
  out = convert.jaxslm_to_hf(str(tmp_path / "jax"), str(tmp_path / "export"))
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert np.abs(_hf_logits(back, tokens) - _hf_logits(model, tokens)).max() < TOL


def test_llama_linear_rope_scaling(tmp_path, tokens):
  """Llama with rope_scaling {"rope_type": "linear"}: positions divided by the
  factor (every inverse frequency is), in both directions."""
  config = transformers.LlamaConfig(**LLAMA_SHAPE, tie_word_embeddings=False, rope_theta=10000.0,
                                    rope_scaling={"rope_type": "linear", "factor": 4.0})
  model, hf_dir = _random_hf_model(config, tmp_path)
  cfg, params, _ = jaxslm.load(convert.hf_to_jaxslm(hf_dir, str(tmp_path / "jax")))
  assert dict(cfg.rope_scaling) == {"type": "linear", "factor": 4.0}
  ours = _jax_logits(cfg, params, tokens)
  assert np.abs(ours - _hf_logits(model, tokens)).max() < TOL
  unscaled = _jax_logits(cfg.replace(rope_scaling={}), params, tokens)
  assert np.abs(unscaled - ours).max() > 1e-2   # the scaling matters at these positions
  out = convert.jaxslm_to_hf(str(tmp_path / "jax"), str(tmp_path / "export"))
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert np.abs(_hf_logits(back, tokens) - _hf_logits(model, tokens)).max() < TOL


def test_config_from_hf_reads_each_family(tmp_path):
  cfgs = {k: c.to_dict() for k, c in _hf_configs().items()}
  gpt2 = convert.config_from_hf(cfgs["gpt2"])
  assert (gpt2.position, gpt2.norm, gpt2.mlp, gpt2.d_ff, gpt2.max_seq_len) == (
      "learned", "layernorm", "gelu", 256, 64)
  llama = convert.config_from_hf(cfgs["llama"], dtype="bfloat16")
  assert dict(llama.rope_scaling)["type"] == "llama3" and llama.param_dtype == "bfloat16"
  again = jaxslm.ModelConfig.from_dict(json.loads(json.dumps(llama.to_dict())))
  assert again == llama and hash(again) == hash(llama)   # static under jit after a checkpoint
  qwen2 = convert.config_from_hf(cfgs["qwen2"])
  assert (qwen2.has_qkv_bias, qwen2.has_o_bias, qwen2.use_bias) == (True, False, False)
  assert qwen2.num_kv_heads == 2 and qwen2.tie_embeddings and qwen2.rope_theta == 1e6
  assert convert.config_from_hf(cfgs["mistral"]).sliding_window == 8
  (tmp_path / "config.json").write_text(json.dumps(cfgs["mistral"]))
  assert convert.config_from_hf(str(tmp_path / "config.json")).sliding_window == 8
  qwen3 = convert.config_from_hf(cfgs["qwen3"])
  assert qwen3.qk_norm and qwen3.dim_per_head == 24 and not qwen3.has_qkv_bias
  phi = convert.config_from_hf(cfgs["phi"])
  assert (phi.parallel_block, phi.lm_head_bias, phi.use_bias, phi.norm, phi.mlp) == (
      True, True, True, "layernorm", "gelu")
  assert phi.partial_rotary_factor == 0.5 and phi.rotary_dim == 8 and not phi.qk_norm
  phi2_style = {k: v for k, v in cfgs["phi"].items() if k != "rope_parameters"}
  assert convert.config_from_hf({**phi2_style, "partial_rotary_factor": 0.4,
                                 "qk_layernorm": True}).partial_rotary_factor == 0.4
  phi3 = convert.config_from_hf(cfgs["phi3"])
  assert (phi3.rotary_dim, phi3.mlp, phi3.use_bias, phi3.num_kv_heads) == (12, "swiglu", False, 2)
  for cfg in (qwen3, phi, phi3):
    assert jaxslm.ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
  with pytest.raises(UserError, match="phi3: RoPE scaling type 'longrope' is not supported"):
    convert.config_from_hf({**cfgs["phi3"], "rope_parameters": {
        "rope_type": "longrope", "short_factor": [1.0] * 6, "long_factor": [2.0] * 6}})
  with pytest.raises(UserError, match="dtype='int8'"):
    convert.config_from_hf(cfgs["llama"], dtype="int8")
  with pytest.raises(UserError, match="RoPE scaling type 'yarn'"):
    convert.config_from_hf({**cfgs["llama"], "rope_parameters": {"rope_type": "yarn"}})


def test_gemma3_config_forms_and_refusals():
  """transformers 5's nested rope_parameters and transformers 4's flat fields
  (what the Hub's Gemma 3 config.json files hold) read the same."""
  v5 = _hf_configs()["gemma3"].to_dict()
  cfg = convert.config_from_hf(v5)
  assert (cfg.mlp, cfg.qk_norm, cfg.sandwich_norm, cfg.embed_scale, cfg.tie_embeddings) == (
      "geglu", True, True, True, True)
  assert (cfg.sliding_window, cfg.global_layers, cfg.attn_scale_dim, cfg.dim_per_head) == (
      8, (1, 3), 32, 24)
  assert cfg.layer_rope(0) == (1e4, ()) and cfg.layer_rope(1) == (1e6, cfg.rope_scaling)
  assert dict(cfg.rope_scaling) == {"type": "linear", "factor": 8.0}
  again = jaxslm.ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
  assert again == cfg and hash(again) == hash(cfg)
  v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "layer_types")}
  v4.update(rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=2,
            rope_scaling={"type": "linear", "factor": 8.0})
  assert convert.config_from_hf(v4) == cfg
  # Keys a config.json leaves out take Gemma3TextConfig's defaults (as gemma-3-4b's text_config).
  sparse = convert.config_from_hf({"model_type": "gemma3_text", "num_hidden_layers": 6})
  assert (sparse.d_model, sparse.n_heads, sparse.dim_per_head, sparse.sliding_window,
          sparse.global_layers, sparse.rope_theta, sparse.rope_local_theta) == (
      2304, 8, 256, 4096, (5,), 1e6, 1e4)
  with pytest.raises(UserError, match="final_logit_softcapping=30.0 is not supported"):
    convert.config_from_hf({**v5, "final_logit_softcapping": 30.0})
  with pytest.raises(UserError, match="hidden_activation='silu'"):
    convert.config_from_hf({**v5, "hidden_activation": "silu"})
  with pytest.warns(UserWarning, match="attn_logit_softcapping=50.0 is ignored"):
    convert.config_from_hf({**v5, "attn_logit_softcapping": 50.0})


def test_gemma3_multimodal_checkpoint_converts_its_text_model(tmp_path, tokens):
  """A Gemma3ForConditionalGeneration (gemma-3-4b's layout): the vision tower is
  skipped, the text model converts and exports as Gemma3ForCausalLM."""
  text = {**GEMMA3_SHAPE, "num_hidden_layers": 2, "vocab_size": VOCAB}
  vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, image_size=28, patch_size=14)
  config = transformers.Gemma3Config(text_config=text, vision_config=vision,
                                     mm_tokens_per_image=4, image_token_index=VOCAB - 1,
                                     boi_token_index=VOCAB - 2, eoi_token_index=VOCAB - 3,
                                     **{k: v for k, v in COMMON.items() if k != "vocab_size"})
  model, hf_dir = _random_hf_model(config, tmp_path)
  cfg, params, _ = jaxslm.load(convert.hf_to_jaxslm(hf_dir, str(tmp_path / "jax")))
  ids = [[t % (VOCAB - 3) for t in row] for row in tokens]   # no image tokens
  assert np.abs(_jax_logits(cfg, params, ids) - _hf_logits(model, ids)).max() < TOL
  out = convert.jaxslm_to_hf(str(tmp_path / "jax"), str(tmp_path / "export"))
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(back).__name__ == "Gemma3ForCausalLM"
  assert np.abs(_hf_logits(back, ids) - _hf_logits(model, ids)).max() < TOL


# ------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(_hf_configs()["llama"])
  d = str(tmp_path_factory.mktemp("llama_err") / "hf")
  model.save_pretrained(d)
  _save_tokenizer(d)
  return d


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_unsupported_model_type_lists_supported(tmp_path):
  d = tmp_path / "bert"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(UserError,
                     match=r"'bert'.*supported.*gpt2.*gpt_neox.*llama.*mistral.*qwen2"):
    convert.hf_to_jaxslm(str(d), str(tmp_path / "out"))


def test_directory_without_config_json(tmp_path):
  with pytest.raises(UserError, match="no config.json"):
    convert.hf_to_jaxslm(str(tmp_path), str(tmp_path / "out"))


def test_missing_and_unexpected_tensors_are_named(llama_dir, tmp_path):
  from safetensors.flax import load_file, save_file
  d = _copy(llama_dir, tmp_path / "hf")
  path = os.path.join(d, "model.safetensors")
  tensors = load_file(path)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.7.mlp.up_proj.weight"] = jnp.zeros((128, 64))
  save_file(tensors, path, metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"missing tensors model\.layers\.1\.mlp\.up_proj\.weight"
                                      r".*unexpected tensors model\.layers\.7\.mlp\.up_proj"):
    convert.hf_to_jaxslm(d, str(tmp_path / "out"))


def test_shape_mismatch_names_key_and_both_shapes(llama_dir, tmp_path):
  d = _copy(llama_dir, tmp_path / "hf")
  cfg = json.load(open(os.path.join(d, "config.json")))
  cfg["intermediate_size"] = 96
  json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
  with pytest.raises(UserError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight' has shape "
                                      r"\(64, 128\), but config.json implies \(64, 96\)"):
    convert.hf_to_jaxslm(d, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_native_gpt_style_model_exports_as_gpt_neox(tmp_path, tokens):
  cfg = jaxslm.ModelConfig.preset("small", dtype="float32", vocab_size=VOCAB, n_layers=2)
  params = jaxslm.models.init_params(cfg, jax.random.PRNGKey(0))
  tok = tokenizers.HFTokenizer(_byte_bpe().to_str(), eos_id=0)
  out = convert.export(cfg, params, tok, str(tmp_path / "neox"))
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(back).__name__ == "GPTNeoXForCausalLM"
  assert np.abs(_hf_logits(back, tokens) - _jax_logits(cfg, params, tokens)).max() < TOL


def test_unexpressible_export_is_refused(tmp_path):
  cfg = jaxslm.ModelConfig.preset("tiny", dtype="float32", sliding_window=4)
  params = jaxslm.models.init_params(cfg, jax.random.PRNGKey(0))
  tok = tokenizers.HFTokenizer(_byte_bpe().to_str(), eos_id=0)
  with pytest.raises(UserError, match="llama config.json cannot express.*sliding_window=4"):
    convert.export(cfg, params, tok, str(tmp_path / "x"), model_type="llama")
  out = convert.export(cfg, params, tok, str(tmp_path / "y"))   # inferred: mistral
  assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "mistral"


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_json_matches_transformers(tmp_path):
  _save_tokenizer(str(tmp_path))
  ours = tokenizers.get_tokenizer(str(tmp_path))
  theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
  rebuilt = tokenizers.from_spec(json.loads(json.dumps(ours.spec())))
  for text in TEXTS[:3] + ["", " leading space", "new\nlines\n\n"]:
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False) == rebuilt.encode(text)
    assert ours.decode(ids) == text == theirs.decode(ids)
  assert ours.eos_id == theirs.convert_tokens_to_ids("<|endoftext|>") == ours.pad_id
  assert ours.bos_id is None and ours.chat_template == CHAT_TEMPLATE
  # Special-token text in user input is plain text, as with the other tokenizers.
  assert ours.eos_id not in ours.encode("a<|endoftext|>b")
  assert ours.encode("x", add_eos=True)[-1] == ours.eos_id


# ----------------------------------------------------------------- launcher


def _launcher():
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "launch", "convert.py")
  spec = importlib.util.spec_from_file_location("launch_convert", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_launcher_both_directions(llama_dir, tmp_path, capsys):
  main = _launcher().main
  ckpt, hf = str(tmp_path / "ckpt"), str(tmp_path / "hf")
  assert main(["hf2jax", "--hf", llama_dir, "--out", ckpt, "--dtype", "bfloat16"]) == 0
  assert main(["jax2hf", "--checkpoint", ckpt, "--out", hf]) == 0
  assert json.load(open(os.path.join(hf, "config.json")))["model_type"] == "llama"
  assert main(["hf2jax", "--hf", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
  assert "no config.json" in capsys.readouterr().err


def test_sentencepiece_model_file_without_tokenizer_json(llama_dir, tmp_path):
  """A repo with only tokenizer.model (SentencePiece, as older Gemma/Llama ones)
  converts with that tokenizer behind jaxslm's interface."""
  import base64
  from jaxslm.tokenizers import train_sentencepiece
  d = tmp_path / "hf"
  _copy(llama_dir, d)
  os.remove(d / "tokenizer.json")
  sp = train_sentencepiece(TEXTS * 20, vocab_size=VOCAB)
  (d / "tokenizer.model").write_bytes(base64.b64decode(sp.spec()["model_proto_b64"]))
  with pytest.warns(UserWarning, match="no tokenizer.json"):
    out = convert.hf_to_jaxslm(str(d), str(tmp_path / "jax"))
  tok = jaxslm.load(out).tokenizer
  assert isinstance(tok, tokenizers.SentencePieceTokenizer)
  assert tok.encode(TEXTS[1]) == sp.encode(TEXTS[1]) and tok.decode(tok.encode(TEXTS[1])) == TEXTS[1]
  os.remove(d / "tokenizer.model")
  with pytest.raises(UserError, match="no tokenizer.json or tokenizer.model"):
    convert.hf_to_jaxslm(str(d), str(tmp_path / "jax2"))
