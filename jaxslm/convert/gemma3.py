"""Gemma 3: `gemma3_text` (`Gemma3ForCausalLM`, e.g. gemma-3-1b) and the text
model inside a multimodal `gemma3` checkpoint (`Gemma3ForConditionalGeneration`,
e.g. gemma-3-4b; its vision tower is skipped and it exports as `gemma3_text`).

    from jaxslm.convert import config_from_hf, hf_to_jaxslm
    cfg = config_from_hf("models/gemma-3-1b-it")   # mlp="geglu", sandwich_norm, ...
    hf_to_jaxslm("models/gemma-3-4b-it", "runs/gemma4b", dtype="bfloat16")

Llama-shaped (RMSNorm, GQA, rotate-half RoPE, q/k/v/o_proj, gate/up/down_proj)
with these differences, each a `ModelConfig` field:

    GeGLU MLP, gelu_pytorch_tanh(gate) * up          mlp="geglu"
    per-head RMSNorm of q and k before RoPE          qk_norm=True
    four norms a layer: input_layernorm,             sandwich_norm=True
      post_attention_layernorm (on the attention
      output, before the residual add),
      pre_feedforward_layernorm, post_feedforward_layernorm
    embeddings times sqrt(hidden_size)               embed_scale=True
    scores q.k / sqrt(query_pre_attn_scalar)         attn_scale_dim
    `layer_types` (or sliding_window_pattern):       sliding_window, global_layers
      5 sliding-window layers to 1 global
    local RoPE base rope_local_base_freq, global      rope_local_theta; rope_theta,
      rope_theta with an optional linear scaling       rope_scaling

Gemma's RMSNorm multiplies by (1 + weight): the conversion stores 1 + weight
(computed in float32, as transformers does) as jaxslm's norm scale and
subtracts 1 on export, so the model itself has no Gemma-specific norm. In
float32 this is exact: transformers computes the same float32 1 + weight. A
bfloat16 conversion rounds 1 + weight to bfloat16 (relative error <= 2^-9),
where transformers keeps it in float32.

`final_logit_softcapping` is refused (Gemma 3 checkpoints set it to null;
jaxslm has no logit soft-capping); `attn_logit_softcapping` is ignored with a
warning, as transformers' Gemma 3 attention ignores it.
"""

from __future__ import annotations

import warnings

import numpy as np

from jaxslm.convert.hf_config import GELUS, bias_fields, rope_from_hf, rope_to_hf
from jaxslm.convert.table import COPY, LINEAR, Family, Rule, register, xp
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig

TEXT = "gemma3_text"
# transformers' Gemma3TextConfig defaults, which it fills in for keys a config.json omits.
DEFAULTS = dict(vocab_size=262_208, hidden_size=2304, intermediate_size=9216,
                num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131_072,
                rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6,
                rope_theta=1_000_000.0, rope_local_base_freq=10_000.0)
SLIDING, FULL = "sliding_attention", "full_attention"


def _layer_types(hf: dict, n_layers: int) -> list[str]:
  types = hf.get("layer_types")
  if types is None:   # transformers 4.5x: every sliding_window_pattern-th layer is global
    p = hf["sliding_window_pattern"]
    types = [SLIDING if (i + 1) % p else FULL for i in range(n_layers)]
  if len(types) != n_layers or set(types) - {SLIDING, FULL}:
    raise UserError(f"{TEXT}: layer_types={types!r} in config.json is invalid: expected "
                    f"num_hidden_layers={n_layers} entries, each {SLIDING!r} or {FULL!r}.")
  return list(types)


def _rope(hf: dict) -> tuple[float, dict, float]:
  """(global theta, global jaxslm rope_scaling, local theta), from transformers 5's
  rope_parameters {"full_attention": ..., "sliding_attention": ...} or transformers
  4's rope_theta, rope_local_base_freq and rope_scaling (global layers only)."""
  params = hf.get("rope_parameters") or {}
  full = dict(params.get(FULL) or {}, **(hf.get("rope_scaling") or {}))
  full.setdefault("rope_theta", hf["rope_theta"])
  local = dict(params.get(SLIDING) or {})
  local.setdefault("rope_theta", hf["rope_local_base_freq"])
  theta, scaling = rope_from_hf({"rope_parameters": full}, TEXT,
                                kinds=("default", "linear", "llama3"))
  local_theta, _ = rope_from_hf({"rope_parameters": local}, TEXT + " (sliding_attention)",
                                kinds=("default",))
  return theta, scaling, local_theta


def _from_hf(hf: dict) -> ModelConfig:
  hf = {**DEFAULTS, **hf}
  act = hf.get("hidden_activation") or hf.get("hidden_act")
  if act not in GELUS:
    raise UserError(f"{TEXT}: hidden_activation={act!r} is not supported; jaxslm's GeGLU uses "
                    f"the tanh GELU, one of {GELUS}.")
  if hf.get("final_logit_softcapping") is not None:
    raise UserError(f"{TEXT}: final_logit_softcapping={hf['final_logit_softcapping']!r} is not "
                    "supported (jaxslm has no logit soft-capping; Gemma 3 checkpoints set it to "
                    "null). Set it to null in config.json only if the model was trained without.")
  if hf.get("attn_logit_softcapping") is not None:
    warnings.warn(f"{TEXT}: attn_logit_softcapping={hf['attn_logit_softcapping']!r} is ignored, "
                  "as transformers' Gemma 3 attention ignores it.", stacklevel=3)
  if hf.get("use_bidirectional_attention"):
    raise UserError(f"{TEXT}: use_bidirectional_attention=True (an encoder) is not supported; "
                    "jaxslm decoders are causal.")
  d, n, n_layers = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
  head_dim = hf["head_dim"] or d // n
  sliding = [t == SLIDING for t in _layer_types(hf, n_layers)]
  window = hf.get("sliding_window") if any(sliding) else None
  if any(sliding) and not window:
    raise UserError(f"{TEXT}: sliding_window={window!r} but layer_types has "
                    f"{SLIDING!r} layers; give the window (Gemma 3 1B: 512).")
  theta, scaling, local_theta = _rope(hf)
  attn_bias = bool(hf["attention_bias"])
  return ModelConfig(
      vocab_size=hf["vocab_size"], d_model=d, n_layers=n_layers, n_heads=n,
      n_kv_heads=hf["num_key_value_heads"] or n, head_dim=0 if head_dim * n == d else head_dim,
      d_ff=hf["intermediate_size"], max_seq_len=hf["max_position_embeddings"], norm="rmsnorm",
      norm_eps=float(hf["rms_norm_eps"]), mlp="geglu", position="rope", rope_theta=theta,
      rope_scaling=scaling, rope_local_theta=local_theta, sliding_window=window,
      global_layers=tuple(i for i, s in enumerate(sliding) if not s) if window else (),
      qk_norm=True, sandwich_norm=True, embed_scale=True,
      attn_scale_dim=hf["query_pre_attn_scalar"],
      tie_embeddings=bool(hf["tie_word_embeddings"]), dtype="float32", param_dtype="float32",
      **bias_fields(attn_bias, attn_bias, False))


def _pattern(cfg: ModelConfig) -> int | None:
  """transformers 4's sliding_window_pattern, where the global layers are every p-th."""
  for p in range(1, cfg.n_layers + 2):
    if cfg.global_layers == tuple(i for i in range(cfg.n_layers) if (i + 1) % p == 0):
      return p
  return None


def _to_hf(cfg: ModelConfig) -> dict:
  types = [SLIDING if cfg.layer_window(i) else FULL for i in range(cfg.n_layers)]
  scalar = cfg.attn_scale_dim or cfg.dim_per_head
  rope = rope_to_hf(cfg)
  out = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
             num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
             num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.dim_per_head,
             intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len,
             rms_norm_eps=cfg.norm_eps, hidden_activation="gelu_pytorch_tanh",
             tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.has_qkv_bias,
             query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
             # transformers builds a sliding mask even when no layer uses one.
             sliding_window=cfg.sliding_window or cfg.max_seq_len, layer_types=types,
             rope_local_base_freq=(cfg.rope_theta if cfg.rope_local_theta is None
                                   else cfg.rope_local_theta),
             final_logit_softcapping=None, attn_logit_softcapping=None, **rope)
  if SLIDING in types and _pattern(cfg):
    out["sliding_window_pattern"] = _pattern(cfg)
  return out


def _plus_one_to_jax(x, cfg):
  m = xp(x)
  return (m.asarray(x, m.float32) + 1,)


def _minus_one_to_hf(xs, cfg):
  return (xs[0].astype(np.float32) - 1).astype(xs[0].dtype)


GEMMA_NORM = (_plus_one_to_jax, _minus_one_to_hf)   # x * (1 + w)  <->  jaxslm's x * scale


def rules(cfg: ModelConfig) -> list[Rule]:
  out = [Rule("model.embed_tokens.weight", ("embed",), *COPY),
         Rule("model.norm.weight", ("final_norm/scale",), *GEMMA_NORM)]
  if not cfg.tie_embeddings:
    out.append(Rule("lm_head.weight", ("lm_head/kernel",), *LINEAR))
  hf, jx = "model.layers.{i}.", "layers_{i}/"
  for src, dst in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "post_attn_norm"),
                   ("pre_feedforward_layernorm", "mlp_norm"),
                   ("post_feedforward_layernorm", "post_mlp_norm"),
                   ("self_attn.q_norm", "attn/q_norm"), ("self_attn.k_norm", "attn/k_norm")):
    out.append(Rule(hf + f"{src}.weight", (jx + f"{dst}/scale",), *GEMMA_NORM))
  for name in "qkvo":
    out.append(Rule(hf + f"self_attn.{name}_proj.weight", (jx + f"attn/{name}_proj/kernel",),
                    *LINEAR))
    if cfg.has_qkv_bias:
      out.append(Rule(hf + f"self_attn.{name}_proj.bias", (jx + f"attn/{name}_proj/bias",),
                      *COPY))
  for name in ("gate", "up", "down"):
    out.append(Rule(hf + f"mlp.{name}_proj.weight", (jx + f"mlp/{name}_proj/kernel",), *LINEAR))
  return out


# ------------------------------------------------- the multimodal checkpoint


_TOP_LEVEL = ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")


def text_config(hf: dict) -> dict:
  """A `gemma3` (multimodal) config.json -> its text model's `gemma3_text` config:
  `text_config`, with the token ids and embedding tying given at the top level."""
  text = dict(hf.get("text_config") or {})
  text.update({k: hf[k] for k in _TOP_LEVEL if hf.get(k) is not None})
  text["model_type"] = TEXT
  text["architectures"] = ["Gemma3ForCausalLM"]
  return text


def _normalize(key: str) -> str:
  """transformers 4 saves `language_model.model.*`, transformers 5 `model.language_model.*`."""
  for prefix, to in (("language_model.model.", "model."), ("model.language_model.", "model."),
                     ("language_model.lm_head.", "lm_head.")):
    if key.startswith(prefix):
      return to + key[len(prefix):]
  return key


def _multimodal_to_hf(cfg: ModelConfig) -> dict:
  raise UserError("A Gemma 3 checkpoint exports as its text model: use model_type='gemma3_text'.")


_OWNED = ("rope_parameters", "rope_scaling", "rope_theta", "rope_local_base_freq", "layer_types",
          "sliding_window_pattern", "_sliding_window_pattern", "head_dim", "sliding_window",
          "query_pre_attn_scalar", "hidden_activation", "hidden_act", "attention_bias",
          "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention")

GEMMA3_TEXT = register(Family(TEXT, "Gemma3ForCausalLM", _from_hf, _to_hf, rules,
                              owned_keys=_OWNED))
GEMMA3 = register(Family(
    "gemma3", "Gemma3ForConditionalGeneration", lambda hf: _from_hf(text_config(hf)),
    _multimodal_to_hf, rules, normalize=_normalize, text_config=text_config,
    ignore=(r".*rotary_emb\.inv_freq", r"(model\.)?vision_tower\..*",
            r"(model\.)?multi_modal_projector\..*")))
