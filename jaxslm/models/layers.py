"""Building blocks of the decoder: linear, norms, RoPE, attention, MLP.

Every projection kernel is a 2-D `[in, out]` matrix named `*_proj/kernel`, so
regular expressions over parameter paths select them (LoRA, freezing,
conversion). Norm statistics, RoPE and softmax run in float32.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxslm import ops
from jaxslm.errors import UserError
from jaxslm.models.config import ModelConfig


def _dt(name: str):
  return jnp.dtype(name)


class Linear(nn.Module):
  """x @ kernel (+ bias) through `ops.dense`; the stored kernel may be a plain
  array, a `jaxslm.lora.LoraWeight` or a quantized kernel."""
  features: int
  cfg: ModelConfig
  use_bias: bool = False
  std: float | None = None
  out_dtype: str | None = None   # e.g. "float32" for the logits

  @nn.compact
  def __call__(self, x):
    std = self.cfg.init_std if self.std is None else self.std
    shape = (x.shape[-1], self.features)
    kernel = (self.get_variable("params", "kernel") if self.has_variable("params", "kernel")
              else None)
    if ops.is_wrapped_kernel(kernel):
      # A LoRA / quantized kernel is a pytree of several arrays; self.param
      # would compare the first of them with the initializer's shape.
      if tuple(kernel.shape) != shape:
        raise UserError(f"{'/'.join(self.scope.path)}/kernel has shape {tuple(kernel.shape)}, "
                        f"but this layer needs {shape}; the params belong to another config.")
    else:
      kernel = self.param("kernel", nn.initializers.normal(std), shape, _dt(self.cfg.param_dtype))
    bias = (self.param("bias", nn.initializers.zeros, (self.features,), _dt(self.cfg.param_dtype))
            if self.use_bias else None)
    # LoRA dropout only when the caller passes rngs={"lora_dropout": key}.
    dropout_rng = self.make_rng("lora_dropout") if self.has_rng("lora_dropout") else None
    return ops.dense(x, kernel, _dt(self.cfg.dtype), bias,
                     None if self.out_dtype is None else _dt(self.out_dtype), dropout_rng)


class Norm(nn.Module):
  """LayerNorm (scale and bias) or RMSNorm (scale), statistics in float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    pdt = _dt(self.cfg.param_dtype)
    x32 = x.astype(jnp.float32)
    if self.cfg.norm == "layernorm":
      x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.cfg.norm_eps)
    y = y * self.param("scale", nn.initializers.ones, (d,), pdt).astype(jnp.float32)
    if self.cfg.norm == "layernorm":
      y = y + self.param("bias", nn.initializers.zeros, (d,), pdt).astype(jnp.float32)
    return y.astype(_dt(self.cfg.dtype))


def rope_inv_freq(h: int, theta: float, scaling=()) -> jax.Array:
  """[H/2] float32 inverse frequencies theta^(-2i/H), adjusted by `scaling`
  (a `ModelConfig.rope_scaling`; "llama3": wavelengths above
  original_len / low_freq_factor are stretched by `factor`, those below
  original_len / high_freq_factor kept, the band between interpolated;
  "linear": every frequency divided by `factor`)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  s = dict(scaling)
  if s.get("type") == "llama3":
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * jnp.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    inv_freq = jnp.where(wavelen > old_len / low, inv_freq / factor,
                         jnp.where(wavelen < old_len / high, inv_freq, blended))
  elif s.get("type") == "linear":
    inv_freq = inv_freq / s["factor"]
  elif s:
    raise UserError(f"rope_scaling type {s.get('type')!r} is not implemented.")
  return inv_freq


def rope(x_btnh: jax.Array, positions_bt: jax.Array, theta: float, scaling=(),
         rotary_dim: int | None = None) -> jax.Array:
  """Rotary embedding, rotate-half layout (first half / second half of the
  rotated dims). Only the first `rotary_dim` dims of each head (all when
  None) rotate, with frequencies over `rotary_dim`; the rest pass through."""
  h = x_btnh.shape[-1]
  r = h if rotary_dim is None else rotary_dim
  inv_freq = rope_inv_freq(r, theta, scaling)
  angles_btr = positions_bt[..., None].astype(jnp.float32) * inv_freq
  sin, cos = jnp.sin(angles_btr)[:, :, None, :], jnp.cos(angles_btr)[:, :, None, :]
  x32 = x_btnh.astype(jnp.float32)
  x1, x2 = x32[..., : r // 2], x32[..., r // 2: r]
  parts = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
  if r < h:
    parts.append(x32[..., r:])
  return jnp.concatenate(parts, axis=-1).astype(x_btnh.dtype)


# Prefill chunks (T > 1 queries against the cache) use jax.nn.dot_product_attention:
# None = on GPUs (cuDNN's fused kernel where it applies), True/False = always/never.
FUSED_PREFILL_ATTENTION: bool | None = None


def _fused_prefill() -> bool:
  if FUSED_PREFILL_ATTENTION is None:
    return jax.default_backend() == "gpu"
  return FUSED_PREFILL_ATTENTION


def masked_attention(q_btnh: jax.Array, k_bksh: jax.Array, v_bksh: jax.Array,
                     mask_bts: jax.Array, scale: float | None = None) -> jax.Array:
  """Softmax(q k^T * scale) v over the keys `mask_bts` allows, GQA by grouping
  (`scale` None: 1 / sqrt(H)).

  Keys and values come in the cache's layout [B, K, S, H] (each head's slots
  contiguous, so a decode step reads them as one block per head). Scores and
  softmax in float32. Disallowed keys get the most negative finite float,
  never -inf, so a row with no allowed key stays finite (its result is
  unused) and can never leak NaN into the cache.
  """
  b, t, n, h = q_btnh.shape
  k = k_bksh.shape[1]
  q_bkgth = q_btnh.reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)
  scores_bkgts = jnp.einsum("bkgth,bksh->bkgts", q_bkgth, k_bksh,
                            preferred_element_type=jnp.float32) * (
                                h ** -0.5 if scale is None else scale)
  scores_bkgts = jnp.where(mask_bts[:, None, None], scores_bkgts, jnp.finfo(jnp.float32).min)
  weights_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(v_bksh.dtype)
  o_bkgth = jnp.einsum("bkgts,bksh->bkgth", weights_bkgts, v_bksh)
  return o_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


class Attention(nn.Module):
  """Causal self-attention. Without a cache: the training path (one call over
  the whole sequence). With a cache ({"k", "v"}: [B, K, S, H]): this call's
  keys/values are written at slots [index, index + T) and the queries attend
  to every slot `mask_bts` allows; returns (output, updated cache). The cache
  is laid out [B, K, S, H] (see `init_cache`). `layer` picks the layer's
  sliding window and RoPE (`cfg.layer_window`, `cfg.layer_rope`)."""
  cfg: ModelConfig
  layer: int = 0

  @nn.compact
  def __call__(self, x_btd, positions_bt, cache=None, cache_index=None, mask_bts=None):
    cfg = self.cfg
    b, t, _ = x_btd.shape
    n, k, h = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
    qkv_bias = cfg.has_qkv_bias
    q_btnh = Linear(n * h, cfg, qkv_bias, name="q_proj")(x_btd).reshape(b, t, n, h)
    k_btkh = Linear(k * h, cfg, qkv_bias, name="k_proj")(x_btd).reshape(b, t, k, h)
    v_btkh = Linear(k * h, cfg, qkv_bias, name="v_proj")(x_btd).reshape(b, t, k, h)
    if cfg.qk_norm:   # one norm over each head's H dims, shared by the heads
      q_btnh = Norm(cfg, name="q_norm")(q_btnh)
      k_btkh = Norm(cfg, name="k_norm")(k_btkh)
    if cfg.position == "rope":
      r = cfg.rotary_dim
      theta, scaling = cfg.layer_rope(self.layer)
      q_btnh = rope(q_btnh, positions_bt, theta, scaling, r)
      k_btkh = rope(k_btkh, positions_bt, theta, scaling, r)
    scale = cfg.attn_scale_dim ** -0.5 if cfg.attn_scale_dim else None
    if cache is None:
      # jax.nn.dot_product_attention handles GQA (N a multiple of K), computes the
      # softmax in float32 and picks cuDNN flash attention where available.
      # A sliding window W lets query i see keys i - W + 1 .. i.
      w = cfg.layer_window(self.layer)
      o_btnh = jax.nn.dot_product_attention(
          q_btnh, k_btkh, v_btkh, scale=scale, is_causal=True,
          local_window_size=None if w is None else (w - 1, 0),
          implementation=cfg.attention_impl or None)
    else:
      start = (0, 0, cache_index, 0)
      cache = {name: jax.lax.dynamic_update_slice(
                   cache[name], new_btkh.transpose(0, 2, 1, 3).astype(cache[name].dtype), start)
               for name, new_btkh in (("k", k_btkh), ("v", v_btkh))}
      s = mask_bts.shape[-1]  # the caller may restrict attention to the first S slots
      k_bksh = cache["k"][:, :, :s].astype(q_btnh.dtype)
      v_bksh = cache["v"][:, :, :s].astype(q_btnh.dtype)
      if t > 1 and _fused_prefill():   # a prefill chunk: cuDNN where it applies
        o_btnh = jax.nn.dot_product_attention(
            q_btnh, k_bksh.transpose(0, 2, 1, 3), v_bksh.transpose(0, 2, 1, 3),
            mask=mask_bts[:, None], scale=scale)
      else:
        o_btnh = masked_attention(q_btnh, k_bksh, v_bksh, mask_bts, scale)
    # Residual-branch output projections get the GPT-2 scaled init.
    out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    out_btd = Linear(cfg.d_model, cfg, cfg.has_o_bias, std=out_std, name="o_proj")(
        o_btnh.reshape(b, t, n * h))
    return out_btd if cache is None else (out_btd, cache)


class MLP(nn.Module):
  """gelu(up(x)) (tanh GELU), or a gated unit act(gate(x)) * up(x): SiLU for
  "swiglu", tanh GELU for "geglu"; then down."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.cfg
    up_btf = Linear(cfg.d_ff, cfg, cfg.use_bias, name="up_proj")(x_btd)
    if cfg.mlp in ("swiglu", "geglu"):
      gate_btf = Linear(cfg.d_ff, cfg, cfg.use_bias, name="gate_proj")(x_btd)
      act = jax.nn.silu if cfg.mlp == "swiglu" else partial(jax.nn.gelu, approximate=True)
      act_btf = act(gate_btf) * up_btf
    else:
      act_btf = jax.nn.gelu(up_btf, approximate=True)
    out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
    return Linear(cfg.d_model, cfg, cfg.use_bias, std=out_std, name="down_proj")(act_btf)


class Block(nn.Module):
  """Pre-norm transformer block (layer number `layer`): x + attn(norm(x)), then
  x + mlp(norm(x)); with `cfg.parallel_block`, x + attn(norm(x)) + mlp(norm(x))
  from one norm; with `cfg.sandwich_norm` (Gemma 3), each branch's output is
  normed too: x + post_attn_norm(attn(norm(x))), x + post_mlp_norm(mlp(norm(x)))."""
  cfg: ModelConfig
  layer: int = 0

  @nn.compact
  def __call__(self, x_btd, positions_bt, cache=None, cache_index=None, mask_bts=None):
    cfg = self.cfg
    attn = Attention(cfg, self.layer, name="attn")
    h_btd = Norm(cfg, name="attn_norm")(x_btd)
    if cache is None:
      a_btd = attn(h_btd, positions_bt)
    else:
      a_btd, cache = attn(h_btd, positions_bt, cache, cache_index, mask_bts)
    if cfg.parallel_block:
      x_btd = x_btd + a_btd + MLP(cfg, name="mlp")(h_btd)
    else:
      if cfg.sandwich_norm:
        a_btd = Norm(cfg, name="post_attn_norm")(a_btd)
      x_btd = x_btd + a_btd
      m_btd = MLP(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x_btd))
      if cfg.sandwich_norm:
        m_btd = Norm(cfg, name="post_mlp_norm")(m_btd)
      x_btd = x_btd + m_btd
    return x_btd if cache is None else (x_btd, cache)
