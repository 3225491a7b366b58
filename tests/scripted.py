"""A model whose every next token is chosen by the test: a bigram table in real weights.

The decoder's blocks are silenced (o_proj and down_proj zero, so each block
adds nothing), the embedding is the identity and the untied head holds the
table: the logits at any position depend only on the token there, so
`table = {"4": "=", "=": "7"}` makes "...4" continue "=7...". Tokens are ASCII
characters (`CharTokenizer`, id = code point, EOS = 0). This exercises the
real sampler, stops and the calculator hook with outputs known in advance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm.models import ModelConfig, init_params
from jaxslm.tokenizers import Tokenizer

V = 128


class CharTokenizer(Tokenizer):
  name, vocab_size, eos_id, bos_id, pad_id, special_tokens = "chars", V, 0, None, 0, {}

  def _encode(self, text):
    return [ord(c) for c in text]

  def _encode_batch(self, texts):
    return [self._encode(t) for t in texts]

  def _decode(self, ids):
    return "".join(chr(i) for i in ids if i)

  def spec(self):
    return {"kind": "chars"}


def bigram_model(table: dict[str, str], *, default: str = "\0", strength: float = 20.0,
                 max_seq_len: int = 64, n_kv_heads: int = 0):
  """(model_cfg, params): after character a the model writes table[a] (else `default`,
  "\\0" being EOS) with probability ~1 - V * exp(-strength)."""
  cfg = ModelConfig(vocab_size=V, d_model=V, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                    d_ff=32, max_seq_len=max_seq_len, norm="rmsnorm", mlp="swiglu",
                    tie_embeddings=False, use_bias=False, dtype="float32")
  params = jax.tree.map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
  params["embed"] = np.eye(V, dtype=np.float32)
  head = np.zeros((V, V), np.float32)
  for a in range(V):
    head[a, ord(table.get(chr(a), default))] = strength / np.sqrt(V)  # RMSNorm(e_a) = sqrt(V) e_a
  params["lm_head"]["kernel"] = head
  for i in range(cfg.n_layers):
    layer = params[f"layers_{i}"]
    layer["attn"]["o_proj"]["kernel"] = np.zeros_like(layer["attn"]["o_proj"]["kernel"])
    layer["mlp"]["down_proj"]["kernel"] = np.zeros_like(layer["mlp"]["down_proj"]["kernel"])
  return cfg, jax.tree.map(jnp.asarray, params)


def chain(text: str) -> dict[str, str]:
  """The table that makes the model continue text[0] with text[1:] (characters distinct)."""
  assert len(set(text)) == len(text), "a bigram table can follow each character only once"
  return {a: b for a, b in zip(text, text[1:])}
