"""Reading and writing Hugging Face `config.json` fields that several families share.

Every family's `config_from_hf` reads hyperparameters through these helpers, so
a missing field, an unsupported activation or RoPE scaling gives the same clear
error whatever the family: `need` (a required field), `rope_from_hf` /
`rope_to_hf` (RoPE base and scaling, transformers 4 and 5 layouts),
`bias_fields` (which projections carry biases), `base_config` / `base_to_hf`
(the Llama-shaped core that Llama, Mistral, Qwen, Phi-3 and Gemma 3 extend) and
`GELUS` (the GELU variants that equal jaxslm's tanh approximation).
"""

from __future__ import annotations

from jaxslm.errors import UserError
from jaxslm.models import ModelConfig

# transformers' names for the tanh-approximated GELU, which is jaxslm's.
GELUS = ("gelu_new", "gelu_pytorch_tanh")

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
