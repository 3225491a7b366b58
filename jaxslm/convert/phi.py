"""Phi families: Phi-1/1.5/2 (`phi`) and Phi-3/Phi-4 (`phi3`).

Phi-2 (`PhiForCausalLM`): one LayerNorm feeds attention and MLP in parallel
(`parallel_block`: x + attn(ln(x)) + mlp(ln(x))), RoPE on the first
`partial_rotary_factor` of each head, biases on every projection, GELU with
the tanh approximation ("gelu_new"), a final LayerNorm and an output head
with a bias (`lm_head_bias`). Its attention output is `self_attn.dense`, its
MLP `mlp.fc1` / `mlp.fc2`; the optional per-head q/k LayerNorm
(`qk_layernorm`) maps to `qk_norm`.

Phi-3 / Phi-4 (`Phi3ForCausalLM`): Llama-shaped (RMSNorm, SwiGLU, no
biases, GQA, optional `sliding_window` and partial rotary) but with fused
projections: `self_attn.qkv_proj` rows are [q (N*H) | k (K*H) | v (K*H)] and
`mlp.gate_up_proj` rows are [gate (F) | up (F)]; they are split into
jaxslm's separate kernels on read and fused again on export. Only plain RoPE
is supported: the "longrope" ("su") scaling of the 128k-context models is
refused with a clear error.

    cfg = config_from_hf("models/phi-2")   # parallel_block, partial_rotary_factor=0.4, ...
"""

from __future__ import annotations

from jaxslm.convert.hf_config import (GELUS, base_config, base_to_hf, bias_fields, need,
                                      partial_rotary_from_hf, rope_from_hf, rope_to_hf)
from jaxslm.convert.table import COPY, LINEAR, Family, Rule, register, split_columns
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig

# ---------------------------------------------------------------------- Phi-2


def _phi_from_hf(hf: dict) -> ModelConfig:
  act = hf.get("hidden_act", "gelu_new")
  if act not in GELUS:
    raise UserError(f"phi: hidden_act={act!r} is not supported; jaxslm's GELU is the tanh "
                    f"approximation, one of {GELUS}.")
  d, n = need(hf, "hidden_size", "phi"), need(hf, "num_attention_heads", "phi")
  theta, scaling = rope_from_hf(hf, "phi", partial=True, kinds=("default",))
  return ModelConfig(
      vocab_size=need(hf, "vocab_size", "phi"), d_model=d,
      n_layers=need(hf, "num_hidden_layers", "phi"), n_heads=n,
      n_kv_heads=hf.get("num_key_value_heads") or n,
      d_ff=need(hf, "intermediate_size", "phi"),
      max_seq_len=hf.get("max_position_embeddings", 2048), norm="layernorm",
      norm_eps=float(hf.get("layer_norm_eps", 1e-5)), mlp="gelu", position="rope",
      rope_theta=theta, rope_scaling=scaling,
      # transformers' PhiConfig defaults the factor to 0.5 when config.json has none.
      partial_rotary_factor=partial_rotary_from_hf(hf, default=0.5),
      qk_norm=bool(hf.get("qk_layernorm", False)), parallel_block=True, lm_head_bias=True,
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      dtype="float32", param_dtype="float32", **bias_fields(True, True, True))


def _phi_to_hf(cfg: ModelConfig) -> dict:
  return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
              num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
              num_key_value_heads=cfg.num_kv_heads, intermediate_size=cfg.d_ff,
              max_position_embeddings=cfg.max_seq_len, layer_norm_eps=cfg.norm_eps,
              hidden_act="gelu_new", partial_rotary_factor=cfg.partial_rotary_factor,
              qk_layernorm=cfg.qk_norm, tie_word_embeddings=cfg.tie_embeddings,
              **rope_to_hf(cfg))


def _phi_rules(cfg: ModelConfig) -> list[Rule]:
  hf, jx = "model.layers.{i}.", "layers_{i}/"
  out = [Rule("model.embed_tokens.weight", ("embed",), *COPY),
         Rule("model.final_layernorm.weight", ("final_norm/scale",), *COPY),
         Rule("model.final_layernorm.bias", ("final_norm/bias",), *COPY),
         Rule("lm_head.bias", ("lm_head/bias",), *COPY)]
  if not cfg.tie_embeddings:
    out.append(Rule("lm_head.weight", ("lm_head/kernel",), *LINEAR))
  norms = [("input_layernorm", "attn_norm")]
  if cfg.qk_norm:
    norms += [("self_attn.q_layernorm", "attn/q_norm"), ("self_attn.k_layernorm", "attn/k_norm")]
  for src, dst in norms:
    out += [Rule(hf + f"{src}.weight", (jx + f"{dst}/scale",), *COPY),
            Rule(hf + f"{src}.bias", (jx + f"{dst}/bias",), *COPY)]
  linears = [("self_attn.q_proj", "attn/q_proj"), ("self_attn.k_proj", "attn/k_proj"),
             ("self_attn.v_proj", "attn/v_proj"), ("self_attn.dense", "attn/o_proj"),
             ("mlp.fc1", "mlp/up_proj"), ("mlp.fc2", "mlp/down_proj")]
  for src, dst in linears:
    out += [Rule(hf + f"{src}.weight", (jx + f"{dst}/kernel",), *LINEAR),
            Rule(hf + f"{src}.bias", (jx + f"{dst}/bias",), *COPY)]
  return out


# ------------------------------------------------------------ Phi-3 / Phi-4


def _phi3_from_hf(hf: dict) -> ModelConfig:
  return base_config(hf, "phi3", partial=True, kinds=("default",),
                     sliding_window=hf.get("sliding_window"), **bias_fields(False, False, False))


def _phi3_to_hf(cfg: ModelConfig) -> dict:
  return dict(base_to_hf(cfg), sliding_window=cfg.sliding_window,
              partial_rotary_factor=cfg.partial_rotary_factor)


def _qkv_sizes(cfg: ModelConfig) -> tuple[int, int, int]:
  n, k, h = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
  return (n * h, k * h, k * h)


def _gate_up_sizes(cfg: ModelConfig) -> tuple[int, int]:
  return (cfg.d_ff, cfg.d_ff)


def _phi3_rules(cfg: ModelConfig) -> list[Rule]:
  hf, jx = "model.layers.{i}.", "layers_{i}/"
  out = [Rule("model.embed_tokens.weight", ("embed",), *COPY),
         Rule("model.norm.weight", ("final_norm/scale",), *COPY)]
  if not cfg.tie_embeddings:
    out.append(Rule("lm_head.weight", ("lm_head/kernel",), *LINEAR))
  out += [Rule(hf + "input_layernorm.weight", (jx + "attn_norm/scale",), *COPY),
          Rule(hf + "post_attention_layernorm.weight", (jx + "mlp_norm/scale",), *COPY),
          Rule(hf + "self_attn.qkv_proj.weight",
               tuple(jx + f"attn/{p}_proj/kernel" for p in "qkv"),
               *split_columns(_qkv_sizes, transpose=True)),
          Rule(hf + "self_attn.o_proj.weight", (jx + "attn/o_proj/kernel",), *LINEAR),
          Rule(hf + "mlp.gate_up_proj.weight",
               (jx + "mlp/gate_proj/kernel", jx + "mlp/up_proj/kernel"),
               *split_columns(_gate_up_sizes, transpose=True)),
          Rule(hf + "mlp.down_proj.weight", (jx + "mlp/down_proj/kernel",), *LINEAR)]
  return out


_OWNED = ("rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor", "head_dim",
          "sliding_window", "qk_layernorm")

PHI = register(Family("phi", "PhiForCausalLM", _phi_from_hf, _phi_to_hf, _phi_rules,
                      owned_keys=_OWNED))
PHI3 = register(Family("phi3", "Phi3ForCausalLM", _phi3_from_hf, _phi3_to_hf, _phi3_rules,
                       owned_keys=_OWNED))
