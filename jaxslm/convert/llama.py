"""Llama-shaped families: Llama (SmolLM2, Llama 3.x), Mistral, Qwen2 and Qwen3.

    RMSNorm, SwiGLU, rotary positions (rotate-half layout, as jaxslm's),
    grouped-query attention; torch `nn.Linear` weights [out, in].

They differ only in config fields: Llama's optional `attention_bias`
(q/k/v/o) and `mlp_bias`, RoPE scaling ("llama3", or "linear": positions
divided by `factor`, as every inverse frequency is), Qwen2's q/k/v biases
(no o_proj bias), Mistral's `sliding_window`, Qwen3's per-head q/k RMSNorm
(`qk_norm`, before RoPE) and explicit `head_dim`. One rule builder serves all
of them; it reads what to emit from the jaxslm config (biases, q/k norms,
tied head). Gemma 3 (`gemma3.py`) reuses the config helpers here.

    from jaxslm.convert import config_from_hf
    cfg = config_from_hf("models/Qwen2.5-0.5B")   # qkv_bias=True, o_bias=False, rmsnorm, swiglu
"""

from __future__ import annotations

from jaxslm.convert.table import COPY, LINEAR, Family, Rule, register
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig

_REQUIRED = object()


def need(hf: dict, key: str, model_type: str, default=_REQUIRED):
  """hf[key], or `default`; a clear error when a required field is absent."""
  value = hf.get(key, default)
  if value is _REQUIRED or (value is None and default is _REQUIRED):
    raise UserError(f"config.json of this {model_type} model lacks {key!r}; it is required "
                    "to build the jaxslm config. Use the config.json saved with the weights.")
  return value


def _rope_params(hf: dict) -> dict:
  return {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}


def partial_rotary_from_hf(hf: dict, default: float = 1.0) -> float:
  """The fraction of each head RoPE rotates (`partial_rotary_factor`, top
  level in transformers 4, inside `rope_parameters` in transformers 5)."""
  return float(_rope_params(hf).get("partial_rotary_factor",
                                    hf.get("partial_rotary_factor", default)))


def rope_from_hf(hf: dict, model_type: str, partial: bool = False,
                 kinds: tuple[str, ...] = ("default", "llama3")) -> tuple[float, dict]:
  """(theta, jaxslm rope_scaling) from `rope_parameters` (transformers 5) or
  `rope_theta` + `rope_scaling` (transformers 4). `partial`: the family may
  rotate part of each head (read with `partial_rotary_from_hf`); `kinds`: the
  RoPE types the family has."""
  params = _rope_params(hf)
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = params.get("rope_type", params.get("type", "default"))
  if not partial and partial_rotary_from_hf(hf) != 1.0:
    raise UserError(f"{model_type}: partial_rotary_factor != 1 is not supported for this family.")
  if kind not in kinds:
    raise UserError(f"{model_type}: RoPE scaling type {kind!r} is not supported; supported: "
                    f"{', '.join(repr(k) for k in kinds)}.")
  if kind == "default":
    return theta, {}
  if kind == "llama3":
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in params]
    if missing:
      raise UserError(f"{model_type}: the llama3 RoPE scaling in config.json lacks {missing}.")
    return theta, {"type": "llama3", **{k: params[k] for k in keys}}
  if kind == "linear":
    if "factor" not in params:
      raise UserError(f"{model_type}: the linear RoPE scaling in config.json lacks 'factor'.")
    return theta, {"type": "linear", "factor": float(params["factor"])}
  raise UserError(f"{model_type}: RoPE scaling type {kind!r} is not supported; supported: "
                  f"{', '.join(repr(k) for k in kinds)}.")


def rope_to_hf(cfg: ModelConfig) -> dict:
  scaling = dict(cfg.rope_scaling)
  if scaling:
    scaling = {"rope_type": scaling.pop("type"), **scaling}
  return {"rope_theta": cfg.rope_theta, "rope_scaling": scaling or None}


def bias_fields(qkv: bool, o: bool, mlp: bool) -> dict:
  return dict(use_bias=mlp, qkv_bias=None if qkv == mlp else qkv, o_bias=None if o == mlp else o)


# The RoPE types transformers' Llama-shaped models take (rope_type in config.json).
LLAMA_ROPE = ("default", "linear", "llama3")


def base_config(hf: dict, model_type: str, partial: bool = False,
                kinds: tuple[str, ...] = LLAMA_ROPE, **fields) -> ModelConfig:
  """A Llama-shaped config; `partial`, `kinds` as for `rope_from_hf`."""
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise UserError(f"{model_type}: hidden_act={act!r} is not supported; this family's MLP is "
                    "SwiGLU with 'silu'.")
  d, n = need(hf, "hidden_size", model_type), need(hf, "num_attention_heads", model_type)
  head_dim = hf.get("head_dim") or d // n
  theta, scaling = rope_from_hf(hf, model_type, partial, kinds)
  if partial:
    fields["partial_rotary_factor"] = partial_rotary_from_hf(hf)
  return ModelConfig(
      vocab_size=need(hf, "vocab_size", model_type), d_model=d,
      n_layers=need(hf, "num_hidden_layers", model_type), n_heads=n,
      n_kv_heads=hf.get("num_key_value_heads") or n,
      head_dim=0 if head_dim * n == d else head_dim,
      d_ff=need(hf, "intermediate_size", model_type),
      max_seq_len=hf.get("max_position_embeddings", 2048), norm="rmsnorm",
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), mlp="swiglu", position="rope",
      rope_theta=theta, rope_scaling=scaling,
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      dtype="float32", param_dtype="float32", **fields)


def base_to_hf(cfg: ModelConfig) -> dict:
  return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
              num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
              num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.dim_per_head,
              intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len,
              rms_norm_eps=cfg.norm_eps, hidden_act="silu",
              tie_word_embeddings=cfg.tie_embeddings, **rope_to_hf(cfg))


def rules(cfg: ModelConfig) -> list[Rule]:
  """Llama-layout tensors for `cfg`: biases and lm_head only where it has them."""
  out = [Rule("model.embed_tokens.weight", ("embed",), *COPY),
         Rule("model.norm.weight", ("final_norm/scale",), *COPY)]
  if not cfg.tie_embeddings:
    out.append(Rule("lm_head.weight", ("lm_head/kernel",), *LINEAR))
  hf, jx = "model.layers.{i}.", "layers_{i}/"
  out += [Rule(hf + "input_layernorm.weight", (jx + "attn_norm/scale",), *COPY),
          Rule(hf + "post_attention_layernorm.weight", (jx + "mlp_norm/scale",), *COPY)]
  if cfg.qk_norm:
    out += [Rule(hf + f"self_attn.{p}_norm.weight", (jx + f"attn/{p}_norm/scale",), *COPY)
            for p in "qk"]
  for name, bias in (("q", cfg.has_qkv_bias), ("k", cfg.has_qkv_bias), ("v", cfg.has_qkv_bias),
                     ("o", cfg.has_o_bias)):
    out.append(Rule(hf + f"self_attn.{name}_proj.weight", (jx + f"attn/{name}_proj/kernel",),
                    *LINEAR))
    if bias:
      out.append(Rule(hf + f"self_attn.{name}_proj.bias", (jx + f"attn/{name}_proj/bias",),
                      *COPY))
  for name in ("gate", "up", "down"):
    out.append(Rule(hf + f"mlp.{name}_proj.weight", (jx + f"mlp/{name}_proj/kernel",), *LINEAR))
    if cfg.use_bias:
      out.append(Rule(hf + f"mlp.{name}_proj.bias", (jx + f"mlp/{name}_proj/bias",), *COPY))
  return out


# ---------------------------------------------------------------- the families


def _llama_from_hf(hf: dict) -> ModelConfig:
  attn = bool(hf.get("attention_bias", False))
  return base_config(hf, "llama", **bias_fields(attn, attn, bool(hf.get("mlp_bias", False))))


def _llama_to_hf(cfg: ModelConfig) -> dict:
  return dict(base_to_hf(cfg), attention_bias=cfg.has_qkv_bias, mlp_bias=cfg.use_bias)


def _mistral_from_hf(hf: dict) -> ModelConfig:
  return base_config(hf, "mistral", sliding_window=hf.get("sliding_window"),
                     **bias_fields(False, False, False))


def _mistral_to_hf(cfg: ModelConfig) -> dict:
  return dict(base_to_hf(cfg), sliding_window=cfg.sliding_window)


def _qwen_sliding(hf: dict, model_type: str) -> int | None:
  """The sliding window of a Qwen2/Qwen3 config.json (on every layer or none)."""
  n_layers = need(hf, "num_hidden_layers", model_type)
  window = hf.get("sliding_window")
  if "layer_types" in hf:      # transformers 5 spells out each layer
    sliding = [t == "sliding_attention" for t in hf["layer_types"]]
  elif hf.get("use_sliding_window") and window is not None:
    first = hf.get("max_window_layers", n_layers)
    sliding = [i >= first for i in range(n_layers)]
  else:
    sliding = [False] * n_layers
  if any(sliding) and not all(sliding):
    raise UserError(f"{model_type}: sliding-window attention on some layers only "
                    "(use_sliding_window with max_window_layers < num_hidden_layers) is not "
                    "supported yet.")
  return window if all(sliding) else None


def _qwen2_from_hf(hf: dict) -> ModelConfig:
  return base_config(hf, "qwen2", sliding_window=_qwen_sliding(hf, "qwen2"),
                     **bias_fields(True, False, False))


def _qwen3_from_hf(hf: dict) -> ModelConfig:
  attn = bool(hf.get("attention_bias", False))
  return base_config(hf, "qwen3", sliding_window=_qwen_sliding(hf, "qwen3"), qk_norm=True,
                     **bias_fields(attn, attn, False))


def _qwen2_to_hf(cfg: ModelConfig) -> dict:
  window = cfg.sliding_window
  return dict(base_to_hf(cfg), use_sliding_window=window is not None, sliding_window=window,
              max_window_layers=0 if window is not None else cfg.n_layers)


def _qwen3_to_hf(cfg: ModelConfig) -> dict:
  return dict(_qwen2_to_hf(cfg), attention_bias=cfg.has_qkv_bias)


# Fields of an original config.json that the exporter re-derives (dropped
# before the jaxslm-derived fields are written), for every Llama-shaped family.
_OWNED = ("rope_parameters", "rope_scaling", "rope_theta", "layer_types", "head_dim",
          "use_sliding_window", "sliding_window", "max_window_layers")

LLAMA = register(Family("llama", "LlamaForCausalLM", _llama_from_hf, _llama_to_hf, rules,
                        owned_keys=_OWNED))
MISTRAL = register(Family("mistral", "MistralForCausalLM", _mistral_from_hf, _mistral_to_hf,
                          rules, owned_keys=_OWNED))
QWEN2 = register(Family("qwen2", "Qwen2ForCausalLM", _qwen2_from_hf, _qwen2_to_hf, rules,
                        owned_keys=_OWNED))
QWEN3 = register(Family("qwen3", "Qwen3ForCausalLM", _qwen3_from_hf, _qwen3_to_hf, rules,
                        owned_keys=_OWNED))
