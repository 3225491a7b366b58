"""GPT-NeoX: jaxslm's own GPT-style presets (slm26m, small) in Hugging Face form.

LayerNorm, GELU (tanh approximation), biases, rotary positions over the whole
head (rotate-half layout), sequential residual (`use_parallel_residual=False`;
Pythia's parallel residual is not supported). q|k|v are one fused
`attention.query_key_value` nn.Linear whose rows are ordered [head][q|k|v][h].

    jaxslm_to_hf("runs/default", "exports/default")   # an slm26m run -> GPTNeoXForCausalLM

The untied head is written `embed_out.weight` (transformers 4 name; 5 renames
it to `lm_head.weight` on load, and that name is accepted on read).
"""

from __future__ import annotations

from jaxslm.convert.hf_config import GELUS, bias_fields, need, rope_from_hf, rope_to_hf
from jaxslm.convert.table import COPY, LINEAR, Family, Rule, register, xp
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig


def _from_hf(hf: dict) -> ModelConfig:
  act = hf.get("hidden_act", "gelu")
  if act not in GELUS:
    raise UserError(f"gpt_neox: hidden_act={act!r} is not supported; jaxslm's GELU is the tanh "
                    f"approximation, one of {GELUS}.")
  if hf.get("use_parallel_residual", True):
    raise UserError("gpt_neox: use_parallel_residual=True (Pythia) is not supported; jaxslm "
                    "blocks are sequential.")
  theta, scaling = rope_from_hf({"rope_theta": hf.get("rotary_emb_base", 10000.0),
                                 "partial_rotary_factor": hf.get("rotary_pct", 0.25), **hf},
                                "gpt_neox")
  attn_bias = bool(hf.get("attention_bias", True))
  return ModelConfig(
      vocab_size=need(hf, "vocab_size", "gpt_neox"), d_model=need(hf, "hidden_size", "gpt_neox"),
      n_layers=need(hf, "num_hidden_layers", "gpt_neox"),
      n_heads=need(hf, "num_attention_heads", "gpt_neox"),
      d_ff=need(hf, "intermediate_size", "gpt_neox"),
      max_seq_len=hf.get("max_position_embeddings", 2048), norm="layernorm",
      norm_eps=float(hf.get("layer_norm_eps", 1e-5)), mlp="gelu", position="rope",
      rope_theta=theta, rope_scaling=scaling,
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      dtype="float32", param_dtype="float32", **bias_fields(attn_bias, attn_bias, True))


def _to_hf(cfg: ModelConfig) -> dict:
  rope = rope_to_hf(cfg)
  return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
              num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
              intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len,
              layer_norm_eps=cfg.norm_eps, hidden_act="gelu_new", use_parallel_residual=False,
              rotary_pct=1.0, rotary_emb_base=rope["rope_theta"],
              rope_scaling=rope["rope_scaling"], attention_bias=cfg.has_qkv_bias,
              tie_word_embeddings=cfg.tie_embeddings)


def _qkv_to_jax(x, cfg):
  """[N*3*H, D] rows (or [N*3*H] bias) -> q, k, v as [D, N*H] kernels (or [N*H])."""
  n, h = cfg.n_heads, cfg.dim_per_head
  x = x.reshape(n, 3, h, *x.shape[1:])
  return tuple(xp(x).transpose(x[:, j].reshape(n * h, *x.shape[3:])) for j in range(3))


def _qkv_to_hf(xs, cfg):
  n, h = cfg.n_heads, cfg.dim_per_head
  m = xp(*xs)
  parts = [m.transpose(x).reshape(n, h, *x.shape[:-1]) for x in xs]   # [N, H(, D)]
  return m.stack(parts, axis=1).reshape(n * 3 * h, *xs[0].shape[:-1])


def _rules(cfg: ModelConfig) -> list[Rule]:
  t, hf, jx = "gpt_neox.", "gpt_neox.layers.{i}.", "layers_{i}/"
  out = [Rule(t + "embed_in.weight", ("embed",), *COPY),
         Rule(t + "final_layer_norm.weight", ("final_norm/scale",), *COPY),
         Rule(t + "final_layer_norm.bias", ("final_norm/bias",), *COPY)]
  if not cfg.tie_embeddings:
    out.append(Rule("embed_out.weight", ("lm_head/kernel",), *LINEAR))
  for src, dst in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm")):
    out += [Rule(hf + f"{src}.weight", (jx + f"{dst}/scale",), *COPY),
            Rule(hf + f"{src}.bias", (jx + f"{dst}/bias",), *COPY)]
  qkv = tuple(jx + f"attn/{p}_proj/" for p in "qkv")
  out += [Rule(hf + "attention.query_key_value.weight", tuple(p + "kernel" for p in qkv),
               _qkv_to_jax, _qkv_to_hf),
          Rule(hf + "attention.dense.weight", (jx + "attn/o_proj/kernel",), *LINEAR),
          Rule(hf + "mlp.dense_h_to_4h.weight", (jx + "mlp/up_proj/kernel",), *LINEAR),
          Rule(hf + "mlp.dense_h_to_4h.bias", (jx + "mlp/up_proj/bias",), *COPY),
          Rule(hf + "mlp.dense_4h_to_h.weight", (jx + "mlp/down_proj/kernel",), *LINEAR),
          Rule(hf + "mlp.dense_4h_to_h.bias", (jx + "mlp/down_proj/bias",), *COPY)]
  if cfg.has_qkv_bias:
    out.append(Rule(hf + "attention.query_key_value.bias", tuple(p + "bias" for p in qkv),
                    _qkv_to_jax, _qkv_to_hf))
  if cfg.has_o_bias:
    out.append(Rule(hf + "attention.dense.bias", (jx + "attn/o_proj/bias",), *COPY))
  return out


def _normalize(key: str) -> str:
  return "embed_out." + key[len("lm_head."):] if key.startswith("lm_head.") else key


GPT_NEOX = register(Family(
    "gpt_neox", "GPTNeoXForCausalLM", _from_hf, _to_hf, _rules,
    ignore=(r".*rotary_emb\.inv_freq", r"gpt_neox\.layers\.\d+\.attention\.(masked_)?bias"),
    ignore_tied=(r"embed_out\.weight",), normalize=_normalize,
    owned_keys=("rope_parameters", "rope_scaling", "rope_theta", "rotary_pct",
                "rotary_emb_base", "partial_rotary_factor")))
