"""GGUF architectures as Hugging Face ones: a GGUF file's metadata -> the
config.json of the same model, and its tensor names -> the Hugging Face names
the conversion tables (`llama.py`, `gemma3.py`) already know.

    hf = hf_config(header)                     # {"model_type": "llama", "hidden_size": 576, ...}
    hf_name("blk.3.attn_q.weight", "llama")    # "model.layers.3.self_attn.q_proj.weight"
    x = to_hf_layout("blk.3.attn_q.weight", x, "llama", hf)   # llama.cpp's row order undone

What llama.cpp's converter changed, undone here:

- `llama`: the rows of attn_q / attn_k (weights and biases) are permuted per
  head from the rotate-half RoPE layout to the interleaved one; the inverse
  permutation restores Hugging Face's order. Qwen2/Qwen3/Gemma 3 use the
  rotate-half ("NeoX") layout in llama.cpp too and are stored unpermuted.
- `gemma3`: every RMSNorm weight is stored with the 1 of Gemma's x * (1 + w)
  added; 1 is subtracted (in float32) to give the Hugging Face weight, which
  the Gemma 3 table turns into jaxslm's scale 1 + w again (as transformers'
  GGUF loader does, so both compute the same float32 scale).
- Llama 3.1+ RoPE scaling is stored as per-frequency factors (the tensor
  rope_freqs.weight), not as parameters: the parameters are recovered and
  checked to reproduce every factor (else the file is refused).

Phi-3 keeps its fused attn_qkv (q | k | v rows) and ffn_up (gate | up rows),
which are Hugging Face's qkv_proj and gate_up_proj; its LongRoPE factor
tensors (128k-context models) are refused.

Hyperparameters come from `{arch}.*` keys. Required ones missing are a
`UserError` naming the key; optional ones default as llama.cpp does:
head_count_kv = head_count, key_length = embedding_length / head_count,
rope.freq_base = 10000, vocab_size = the number of tokenizer tokens. Gemma 3
takes what llama.cpp fixes for it: 5 sliding-window layers to 1 global, a
local RoPE base of 10000 and queries scaled by key_length^-1/2 (by
(embedding_length / head_count)^-1/2 for the 62-layer 27B model).
"""

from __future__ import annotations

import re

import numpy as np

from jaxslm.convert.gguf_tokenizer import short
from jaxslm.errors import UserError

ARCHITECTURES = ("gemma3", "llama", "phi3", "qwen2", "qwen3")

# GGUF tensor name (with {i} for the layer) -> Hugging Face name, per architecture.
_COMMON = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_output.bias": "model.layers.{i}.self_attn.o_proj.bias",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    **{f"blk.{{i}}.attn_{p}.{kind}": f"model.layers.{{i}}.self_attn.{p}_proj.{kind}"
       for p in "qkv" for kind in ("weight", "bias")},
}
_QK_NORM = {"blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
            "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight"}
_LLAMA = {**_COMMON, "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
          **{f"blk.{{i}}.ffn_{p}.bias": f"model.layers.{{i}}.mlp.{p}_proj.bias"
             for p in ("gate", "up", "down")}}
NAMES = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": {**_LLAMA, **_QK_NORM},
    "phi3": {"token_embd.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight",
             "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
             "blk.{i}.attn_qkv.weight": "model.layers.{i}.self_attn.qkv_proj.weight",
             "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
             "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
             "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.gate_up_proj.weight",
             "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight"},
    "gemma3": {**_COMMON, **_QK_NORM,
               "blk.{i}.post_attention_norm.weight":
                   "model.layers.{i}.post_attention_layernorm.weight",
               "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
               "blk.{i}.post_ffw_norm.weight":
                   "model.layers.{i}.post_feedforward_layernorm.weight"},
}
# Tensors read into the config rather than the params.
CONFIG_TENSORS = ("rope_freqs.weight",)


def _compile(names: dict) -> list[tuple[re.Pattern, str]]:
  return [(re.compile(re.escape(g).replace(r"\{i\}", r"(\d+)") + r"\Z"), h)
          for g, h in names.items()]


_PATTERNS = {arch: _compile(names) for arch, names in NAMES.items()}


def hf_name(name: str, arch: str) -> str | None:
  """The Hugging Face name of GGUF tensor `name`, or None when it has none."""
  for pattern, hf in _PATTERNS[arch]:
    m = pattern.match(name)
    if m:
      return hf.replace("{i}", str(int(m.group(1)))) if m.groups() else hf
  return None


# ------------------------------------------------------------------- config


class _Meta:
  """Typed access to `{arch}.*` metadata keys, errors naming the key."""

  def __init__(self, metadata: dict, arch: str, path: str):
    self.md, self.arch, self.path = metadata, arch, path

  def _bad(self, key: str, value, want: str):
    raise UserError(f"{self.path}: metadata {key}={short(value)} is invalid: expected {want}.")

  def get(self, name: str, kind=int, default=None, required: bool = True):
    key = f"{self.arch}.{name}"
    if key not in self.md:
      if required and default is None:
        raise UserError(f"{self.path}: the GGUF metadata lacks {key!r}, which a {self.arch} "
                        "model needs; the file is incomplete or was written by an old "
                        "converter. Convert the model again with llama.cpp's "
                        "convert_hf_to_gguf.py.")
      return default
    value = self.md[key]
    if isinstance(value, (list, np.ndarray)):
      self._bad(key, value, f"one {kind.__name__}, not an array")
    if kind is int:
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        self._bad(key, value, "a positive integer")
      return value
    if kind is float:
      if (isinstance(value, bool) or not isinstance(value, (int, float))
          or not np.isfinite(value) or value <= 0):
        self._bad(key, value, "a positive finite number")
      return float(value)
    if not isinstance(value, kind):
      self._bad(key, value, kind.__name__)
    return value


def _rope_scaling(m: _Meta, rope_freqs: np.ndarray | None, head_dim: int, theta: float) -> dict:
  kind = m.get("rope.scaling.type", str, default="none", required=False)
  if rope_freqs is not None:
    if kind not in ("none", "linear") or m.get("rope.scaling.factor", float, default=1.0) != 1.0:
      raise UserError(f"{m.path}: both rope_freqs.weight and {m.arch}.rope.scaling.type="
                      f"{short(kind)} are set; only one RoPE scaling is supported.")
    return llama3_from_freqs(rope_freqs, head_dim, theta, m.path)
  if kind == "none":
    return {}
  if kind == "linear":
    factor = m.get("rope.scaling.factor", float)
    return {} if factor == 1.0 else {"rope_type": "linear", "factor": factor}
  raise UserError(f"{m.path}: {m.arch}.rope.scaling.type={short(kind)} is not supported; supported: "
                  "'none', 'linear' (and Llama 3 scaling given by rope_freqs.weight).")


# The Llama 3.1 / 3.2 scaling parameters tried against a file's rope_freqs.weight.
_LLAMA3_CANDIDATES = [dict(low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192)]


def llama3_factors(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                   high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
  """The divisor of each RoPE frequency under Llama 3 scaling (1: unscaled)."""
  freqs = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  wavelen = 2 * np.pi / freqs
  old = original_max_position_embeddings
  smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
  mid = 1 / ((1 - smooth) / factor + smooth)
  return np.where(wavelen < old / high_freq_factor, 1.0,
                  np.where(wavelen > old / low_freq_factor, factor, mid))


def llama3_from_freqs(rope_freqs: np.ndarray, head_dim: int, theta: float, path: str) -> dict:
  freqs = np.asarray(rope_freqs, np.float64).reshape(-1)
  if freqs.shape != (head_dim // 2,) or not np.all(np.isfinite(freqs)):
    raise UserError(f"{path}: rope_freqs.weight has shape {tuple(rope_freqs.shape)}; expected "
                    f"({head_dim // 2},) finite factors (one per RoPE frequency pair).")
  if np.allclose(freqs, 1.0):
    return {}
  factor = float(np.round(freqs.max(), 4))
  for cand in _LLAMA3_CANDIDATES:
    if np.allclose(llama3_factors(head_dim, theta, factor, **cand), freqs, rtol=1e-4, atol=0):
      return {"rope_type": "llama3", "factor": factor, **cand}
  raise UserError(f"{path}: rope_freqs.weight (factors {freqs.min():.4g}..{freqs.max():.4g}) is "
                  "not a Llama 3 RoPE scaling with low_freq_factor=1, high_freq_factor=4, "
                  "original context 8192; other per-frequency RoPE factors are not supported.")


def hf_config(metadata: dict, tensor_names, path: str, rope_freqs: np.ndarray | None = None,
              vocab_rows: int | None = None) -> dict:
  """The Hugging Face config.json (a dict) of the model a GGUF file holds.
  `tensor_names`: the file's tensors (a tied head is one without output.weight);
  `rope_freqs`: the data of rope_freqs.weight, if the file has it;
  `vocab_rows`: token_embd.weight's rows, the vocabulary size of last resort."""
  arch = metadata.get("general.architecture")
  if not isinstance(arch, str) or arch not in ARCHITECTURES:
    raise UserError(f"{path}: general.architecture={short(arch)} is not supported; supported GGUF "
                    f"architectures: {', '.join(ARCHITECTURES)}.")
  m = _Meta(metadata, arch, path)
  d, n = m.get("embedding_length"), m.get("attention.head_count")
  kv = m.get("attention.head_count_kv", default=n)
  if d % n and f"{arch}.attention.key_length" not in metadata:
    raise UserError(f"{path}: {arch}.embedding_length={d} is not a multiple of "
                    f"{arch}.attention.head_count={n}, and {arch}.attention.key_length (the "
                    "head size) is not given.")
  if n > d:
    raise UserError(f"{path}: {arch}.attention.head_count={n} is more than "
                    f"{arch}.embedding_length={d}.")
  head_dim = m.get("attention.key_length", default=d // n)
  value_dim = m.get("attention.value_length", default=head_dim)
  rot = m.get("rope.dimension_count", default=head_dim)
  if value_dim != head_dim or (rot != head_dim and arch != "phi3") or not 0 < rot <= head_dim:
    raise UserError(f"{path}: attention.value_length={value_dim} and rope.dimension_count={rot} "
                    f"must equal the head size {head_dim}; partial RoPE (except for phi3) and "
                    "unequal key/value heads are not supported for GGUF imports.")
  if rot % 2:
    raise UserError(f"{path}: {arch}.rope.dimension_count={rot} is odd; RoPE rotates pairs of "
                    "dimensions, so it must be even.")
  longrope = sorted(t for t in tensor_names if t.startswith("rope_factors_"))
  if longrope:
    raise UserError(f"{path}: {', '.join(longrope)}: LongRoPE scaling (Phi-3 128k context) is "
                    "not supported; use a model with plain RoPE (e.g. a 4k-context Phi-3).")
  if n % kv:
    raise UserError(f"{path}: {arch}.attention.head_count={n} is not a multiple of "
                    f"{arch}.attention.head_count_kv={kv}.")
  tokens = metadata.get("tokenizer.ggml.tokens")
  vocab = m.get("vocab_size", default=len(tokens) if isinstance(tokens, list) and tokens
                else vocab_rows)
  if vocab is None:
    raise UserError(f"{path}: the vocabulary size is unknown: no {arch}.vocab_size, no "
                    "tokenizer.ggml.tokens and no token_embd.weight.")
  theta = m.get("rope.freq_base", float, default=10000.0)
  names = set(tensor_names)
  n_layers = m.get("block_count")
  if n_layers > len(names):   # each layer has several tensors: bounds the loops over layers
    raise UserError(f"{path}: {arch}.block_count={n_layers} but the file has only "
                    f"{len(names)} tensors; the metadata does not describe these weights.")
  hf = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers,
            num_attention_heads=n, num_key_value_heads=kv, head_dim=head_dim,
            intermediate_size=m.get("feed_forward_length"),
            max_position_embeddings=m.get("context_length"),
            rms_norm_eps=m.get("attention.layer_norm_rms_epsilon", float),
            tie_word_embeddings="output.weight" not in names, rope_theta=theta)
  scaling = _rope_scaling(m, rope_freqs, head_dim, theta)
  if arch == "gemma3":
    if scaling.get("rope_type") == "llama3":
      raise UserError(f"{path}: gemma3 with rope_freqs.weight is not supported.")
    window = m.get("attention.sliding_window")
    if f"{arch}.attention.sliding_window_pattern" in metadata:
      raise UserError(f"{path}: {arch}.attention.sliding_window_pattern is not supported; "
                      "Gemma 3 GGUF files have 5 sliding-window layers to 1 global.")
    hf.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
              hidden_activation="gelu_pytorch_tanh", sliding_window=window,
              layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                           for i in range(n_layers)],
              rope_local_base_freq=10000.0,
              query_pre_attn_scalar=d // n if n_layers == 62 else head_dim,
              rope_scaling=scaling or None, final_logit_softcapping=None,
              attn_logit_softcapping=None, attention_bias=False)
    return hf
  if scaling:
    hf["rope_scaling"] = scaling
  bias = any(re.fullmatch(r"blk\.\d+\.attn_[qkv]\.bias", t) for t in names)
  if arch == "phi3":
    hf.update(model_type="phi3", architectures=["Phi3ForCausalLM"], hidden_act="silu",
              partial_rotary_factor=rot / head_dim,
              sliding_window=m.get("attention.sliding_window", required=False))
  elif arch == "llama":
    hf.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
              attention_bias=bias or "blk.0.attn_output.bias" in names,
              mlp_bias="blk.0.ffn_up.bias" in names)
  elif arch == "qwen2":
    hf.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu",
              use_sliding_window=False)
  else:
    hf.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_act="silu",
              attention_bias=bias, use_sliding_window=False)
  return hf


# ------------------------------------------------------------- tensor layout


def _unpermute(x: np.ndarray, heads: int) -> np.ndarray:
  """Rows of each head from llama.cpp's interleaved RoPE order (pairs (2j, 2j+1))
  back to rotate-half order (j, j + H/2): the inverse of its converter's permute."""
  rows = x.shape[0]
  half = rows // heads // 2
  return x.reshape(heads, half, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def to_hf_layout(name: str, x: np.ndarray, arch: str, hf: dict) -> np.ndarray:
  """GGUF tensor `name` (float32, numpy row-major) in Hugging Face's layout."""
  if arch == "llama":
    if re.fullmatch(r"blk\.\d+\.attn_q\.(weight|bias)", name):
      return _unpermute(x, hf["num_attention_heads"])
    if re.fullmatch(r"blk\.\d+\.attn_k\.(weight|bias)", name):
      return _unpermute(x, hf["num_key_value_heads"])
  if arch == "gemma3" and name.endswith("norm.weight"):
    return np.asarray(x, np.float32) - np.float32(1)
  return x
