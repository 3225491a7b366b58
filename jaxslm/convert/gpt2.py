"""GPT-2: learned positions, LayerNorm, GELU (tanh approximation), biases.

Its projections are `Conv1D` modules whose weights are already [in, out]
(jaxslm's kernel layout, no transpose), and q|k|v are one fused
`attn.c_attn` [D, 3D] split into three kernels. Embeddings are tied unless
config.json says otherwise.

    hf = json.load(open("gpt2/config.json"))
    cfg = get_family("gpt2").config_from_hf(hf)   # position="learned", norm="layernorm"

Names: transformers saves `transformer.h.0...`; the original OpenAI-GPT-2
checkpoints on the Hub use `h.0...` (normalized on read) and carry causal-mask
buffers `attn.bias` / `attn.masked_bias` (ignored).
"""

from __future__ import annotations

from jaxslm.convert.hf_config import GELUS, need
from jaxslm.convert.table import COPY, LINEAR, Family, Rule, register, split_columns
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig

# Both spell GELU with the tanh approximation (jaxslm's "gelu").
def _from_hf(hf: dict) -> ModelConfig:
  act = hf.get("activation_function", "gelu_new")
  if act not in GELUS:
    raise UserError(f"gpt2: activation_function={act!r} is not supported; jaxslm's GELU is the "
                    f"tanh approximation, one of {GELUS}.")
  if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
    raise UserError("gpt2: scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True "
                    "is not supported; jaxslm scales attention scores by 1/sqrt(head_dim).")
  if hf.get("add_cross_attention", False):
    raise UserError("gpt2: add_cross_attention=True (an encoder-decoder) is not supported.")
  d = need(hf, "n_embd", "gpt2")
  return ModelConfig(
      vocab_size=need(hf, "vocab_size", "gpt2"), d_model=d, n_layers=need(hf, "n_layer", "gpt2"),
      n_heads=need(hf, "n_head", "gpt2"), d_ff=hf.get("n_inner") or 4 * d,
      max_seq_len=need(hf, "n_positions", "gpt2"), norm="layernorm",
      norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), mlp="gelu", position="learned",
      tie_embeddings=bool(hf.get("tie_word_embeddings", True)), use_bias=True,
      dtype="float32", param_dtype="float32")


def _to_hf(cfg: ModelConfig) -> dict:
  return dict(vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers,
              n_head=cfg.n_heads, n_inner=cfg.d_ff, n_positions=cfg.max_seq_len,
              layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new",
              scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
              tie_word_embeddings=cfg.tie_embeddings)


def _qkv_sizes(cfg: ModelConfig) -> tuple[int, int, int]:
  return (cfg.d_model,) * 3


def _rules(cfg: ModelConfig) -> list[Rule]:
  t, hf, jx = "transformer.", "transformer.h.{i}.", "layers_{i}/"
  out = [Rule(t + "wte.weight", ("embed",), *COPY),
         Rule(t + "wpe.weight", ("pos_embed",), *COPY),
         Rule(t + "ln_f.weight", ("final_norm/scale",), *COPY),
         Rule(t + "ln_f.bias", ("final_norm/bias",), *COPY)]
  if not cfg.tie_embeddings:
    out.append(Rule("lm_head.weight", ("lm_head/kernel",), *LINEAR))
  for src, dst in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
    out += [Rule(hf + f"{src}.weight", (jx + f"{dst}/scale",), *COPY),
            Rule(hf + f"{src}.bias", (jx + f"{dst}/bias",), *COPY)]
  for kind in ("weight", "bias"):
    leaf = "kernel" if kind == "weight" else "bias"
    out += [
        Rule(hf + f"attn.c_attn.{kind}",
             tuple(jx + f"attn/{p}_proj/{leaf}" for p in "qkv"), *split_columns(_qkv_sizes)),
        Rule(hf + f"attn.c_proj.{kind}", (jx + f"attn/o_proj/{leaf}",), *COPY),
        Rule(hf + f"mlp.c_fc.{kind}", (jx + f"mlp/up_proj/{leaf}",), *COPY),
        Rule(hf + f"mlp.c_proj.{kind}", (jx + f"mlp/down_proj/{leaf}",), *COPY)]
  return out


def _normalize(key: str) -> str:
  return key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key


GPT2 = register(Family(
    "gpt2", "GPT2LMHeadModel", _from_hf, _to_hf, _rules,
    ignore=(r"transformer\.h\.\d+\.attn\.(masked_)?bias",), normalize=_normalize,
    owned_keys=("n_inner",)))
