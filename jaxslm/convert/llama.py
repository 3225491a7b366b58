"""Llama-shaped families: Llama (SmolLM2, Llama 3.x), Mistral, Qwen2 and Qwen3.

    RMSNorm, SwiGLU, rotary positions (rotate-half layout, as jaxslm's),
    grouped-query attention; torch `nn.Linear` weights [out, in].

They differ only in config fields: Llama's optional `attention_bias`
(q/k/v/o) and `mlp_bias`, RoPE scaling ("llama3", or "linear": positions
divided by `factor`, as every inverse frequency is), Qwen2's q/k/v biases
(no o_proj bias), Mistral's `sliding_window`, Qwen3's per-head q/k RMSNorm
(`qk_norm`, before RoPE) and explicit `head_dim`. One rule builder serves all
of them; it reads what to emit from the jaxslm config (biases, q/k norms,
tied head). The config.json helpers they share with other families are in
`hf_config.py`.

    from jaxslm.convert import config_from_hf
    cfg = config_from_hf("models/Qwen2.5-0.5B")   # qkv_bias=True, o_bias=False, rmsnorm, swiglu
"""

from __future__ import annotations

from jaxslm.convert.hf_config import base_config, base_to_hf, bias_fields, need
from jaxslm.convert.table import COPY, LINEAR, Family, Rule, register
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig


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
