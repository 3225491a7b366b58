"""`ModelConfig`: the frozen, hashable description of one decoder.

It is static under `jit` (hashable), so a compiled function is keyed by it.
Presets are named configurations; `ModelConfig.preset(name, **overrides)`.
Optional fields for converted checkpoints (all default to the behavior
before they existed):

    ModelConfig(..., qkv_bias=True, o_bias=False)   # Qwen2: q/k/v biases only
    ModelConfig(..., sliding_window=4096)           # Mistral: each query sees 4096 keys
    ModelConfig(..., rope_scaling={"type": "llama3", "factor": 32.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192})
    ModelConfig(..., qk_norm=True)                  # Qwen3: per-head norm of q and k before RoPE
    ModelConfig(..., partial_rotary_factor=0.4,     # Phi-2: RoPE on the first 40% of each head,
                parallel_block=True,                #   x + attn(norm(x)) + mlp(norm(x)),
                lm_head_bias=True)                  #   a bias on the output head
    ModelConfig(..., mlp="geglu", qk_norm=True,     # Gemma 3: gelu(gate) * up,
                sandwich_norm=True,                 #   norms on the attn / MLP outputs too,
                embed_scale=True,                   #   embeddings times sqrt(d_model),
                attn_scale_dim=256,                 #   scores q.k / sqrt(256),
                sliding_window=512,                 #   local layers see 512 keys,
                global_layers=(5, 11, 17, 23),      #   these layers see every key,
                rope_local_theta=10000.0,           #   local layers' RoPE base (no scaling),
                rope_theta=1e6, rope_scaling={"type": "linear", "factor": 8.0})

Shape letters used across jaxslm (suffixes such as `x_btd`, einsum strings):
B batch, T time (query positions), S key/value positions, D model width,
N query heads, K key/value heads, H head dim, F feed-forward width, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from jaxslm.errors import UserError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "geglu")
POSITIONS = ("rope", "learned")
DTYPES = ("float32", "bfloat16", "float16")
# RoPE frequency adjustments: type -> the keys it needs (besides "type").
ROPE_SCALINGS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}


def _freeze(value):
  """Lists (from JSON) as tuples, so the config stays hashable."""
  return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 50257
  d_model: int = 384
  n_layers: int = 12
  n_heads: int = 6
  n_kv_heads: int = 0          # 0 means n_heads (multi-head attention)
  head_dim: int = 0            # 0 means d_model // n_heads
  d_ff: int = 1536
  max_seq_len: int = 1024
  norm: str = "layernorm"      # "layernorm" | "rmsnorm"
  norm_eps: float = 1e-5
  mlp: str = "gelu"            # "gelu" (tanh approx., as GPT-2) | "swiglu" | "geglu" (tanh gelu)
  position: str = "rope"       # "rope" | "learned"
  rope_theta: float = 10000.0
  tie_embeddings: bool = True
  use_bias: bool = True        # biases on the linear projections
  qkv_bias: bool | None = None  # biases on q/k/v_proj; None means use_bias
  o_bias: bool | None = None    # bias on o_proj; None means use_bias
  sliding_window: int | None = None  # a query sees only the last W keys (itself included)
  global_layers: tuple[int, ...] = ()  # layers without the sliding window (Gemma 3's global)
  # RoPE base of the sliding-window layers, which then use no rope_scaling (Gemma 3's
  # rope_local_base_freq); None: every layer uses rope_theta and rope_scaling.
  rope_local_theta: float | None = None
  # RoPE frequency adjustment, e.g. {"type": "llama3", ...} (see ROPE_SCALINGS);
  # stored as sorted (key, value) pairs so the config stays hashable.
  rope_scaling: Any = ()
  # RoPE rotates the first int(head_dim * factor) dims of each head (rotate-half
  # layout within them) and passes the rest through, as Hugging Face does.
  partial_rotary_factor: float = 1.0
  qk_norm: bool = False        # a `norm` over each head's q and k (params [H]), before RoPE
  parallel_block: bool = False  # x + attn(norm(x)) + mlp(norm(x)), one norm per block
  lm_head_bias: bool = False   # a [V] bias on the logits (with tied embeddings too)
  sandwich_norm: bool = False  # also norm the attention and MLP outputs before each residual add
  embed_scale: bool = False    # token embeddings times sqrt(d_model), in the embedding dtype
  attn_scale_dim: float = 0    # scores are q.k / sqrt(attn_scale_dim); 0 means head_dim
  dtype: str = "bfloat16"      # compute dtype; params are kept in param_dtype
  param_dtype: str = "float32"
  init_std: float = 0.02
  remat: bool = False          # recompute each block in the backward pass
  attention_impl: str = ""     # "" lets JAX choose; "xla" or "cudnn" to force

  def __post_init__(self):
    def bad(field, value, expected):
      raise UserError(f"ModelConfig.{field}={value!r} is invalid: expected {expected}.")
    scaling = self.rope_scaling
    if isinstance(scaling, dict):
      scaling = tuple(sorted(scaling.items()))
    if scaling is None or (isinstance(scaling, (list, tuple)) and not scaling):
      scaling = ()
    try:
      scaling = tuple(sorted((str(k), _freeze(v)) for k, v in scaling))
    except (TypeError, ValueError):
      bad("rope_scaling", self.rope_scaling, "a dict such as {'type': 'llama3', ...} or {}")
    object.__setattr__(self, "rope_scaling", scaling)
    if scaling:
      d = dict(scaling)
      if d.get("type") not in ROPE_SCALINGS:
        bad("rope_scaling", d, f"a 'type' among {sorted(ROPE_SCALINGS)}")
      missing = [k for k in ROPE_SCALINGS[d["type"]] if k not in d]
      if missing:
        bad("rope_scaling", d, f"the keys {missing} for type {d['type']!r}")
    if self.sliding_window is not None and (not isinstance(self.sliding_window, int)
                                            or self.sliding_window <= 0):
      bad("sliding_window", self.sliding_window, "a positive integer or None")
    for field in ("qk_norm", "parallel_block", "lm_head_bias", "sandwich_norm", "embed_scale"):
      if not isinstance(getattr(self, field), bool):
        bad(field, getattr(self, field), "True or False")
    f = self.partial_rotary_factor
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
      bad("partial_rotary_factor", f, "a number in (0, 1]")
    object.__setattr__(self, "partial_rotary_factor", float(f))
    for field in ("qkv_bias", "o_bias"):
      if getattr(self, field) not in (None, True, False):
        bad(field, getattr(self, field), "True, False or None (None follows use_bias)")
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
      v = getattr(self, field)
      if not isinstance(v, int) or v <= 0:
        bad(field, v, "a positive integer")
    if self.global_layers and self.sliding_window is None:
      bad("global_layers", self.global_layers, "() when sliding_window is None")
    layers = _freeze(self.global_layers)
    if (not isinstance(layers, tuple) or any(isinstance(i, bool) or not isinstance(i, int)
                                             for i in layers)
        or list(layers) != sorted(set(layers))
        or any(not 0 <= i < self.n_layers for i in layers)):
      bad("global_layers", self.global_layers,
          f"increasing layer indices in [0, n_layers={self.n_layers})")
    object.__setattr__(self, "global_layers", layers)
    t = self.rope_local_theta
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0):
      bad("rope_local_theta", t, "a positive number or None")
    s = self.attn_scale_dim
    if isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0:
      bad("attn_scale_dim", s, "a positive number (0 for head_dim)")
    if self.norm not in NORMS:
      bad("norm", self.norm, f"one of {NORMS}")
    if self.mlp not in MLPS:
      bad("mlp", self.mlp, f"one of {MLPS}")
    if self.position not in POSITIONS:
      bad("position", self.position, f"one of {POSITIONS}")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        bad(field, getattr(self, field), f"one of {DTYPES}")
    if self.sandwich_norm and self.parallel_block:
      bad("sandwich_norm", True, "False with parallel_block=True (one norm per block)")
    if self.attention_impl not in ("", "xla", "cudnn"):
      bad("attention_impl", self.attention_impl, "'', 'xla' or 'cudnn'")
    if not self.head_dim and self.d_model % self.n_heads:
      bad("n_heads", self.n_heads, f"a divisor of d_model={self.d_model} (or set head_dim)")
    if self.num_kv_heads <= 0 or self.n_heads % self.num_kv_heads:
      bad("n_kv_heads", self.n_kv_heads, f"a divisor of n_heads={self.n_heads} (0 for n_heads)")
    if self.position == "rope" and self.dim_per_head % 2:
      bad("head_dim", self.dim_per_head, "an even number for RoPE")
    if self.position == "rope" and (self.rotary_dim <= 0 or self.rotary_dim % 2):
      bad("partial_rotary_factor", f, f"a fraction of head_dim={self.dim_per_head} that "
          "rotates an even, positive number of dims")

  @property
  def num_kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def rotary_dim(self) -> int:
    """How many leading dims of each head RoPE rotates (Hugging Face's rounding)."""
    return int(self.dim_per_head * self.partial_rotary_factor)

  def layer_window(self, i: int) -> int | None:
    """The sliding window of layer `i` (None: it sees every earlier key)."""
    return None if i in self.global_layers else self.sliding_window

  def layer_rope(self, i: int) -> tuple[float, tuple]:
    """(theta, rope_scaling) of layer `i`."""
    if self.rope_local_theta is not None and self.layer_window(i) is not None:
      return self.rope_local_theta, ()
    return self.rope_theta, self.rope_scaling

  @property
  def has_qkv_bias(self) -> bool:
    return self.use_bias if self.qkv_bias is None else self.qkv_bias

  @property
  def has_o_bias(self) -> bool:
    return self.use_bias if self.o_bias is None else self.o_bias

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["rope_scaling"] = dict(self.rope_scaling)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise UserError(f"Unknown ModelConfig fields {unknown}; valid fields: {sorted(fields)}.")
    return cls(**d)

  @classmethod
  def preset(cls, name: str, **overrides) -> "ModelConfig":
    if name not in PRESETS:
      raise UserError(f"Unknown model preset {name!r}; available: {sorted(PRESETS)}.")
    return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # The first paper's table: 12 layers, d 384, 6 heads, FFN 1536, GPT-2
    # vocabulary, RoPE, GELU, LayerNorm, tied embeddings ("about 26M" params;
    # see README for the exact count).
    "slm26m": dict(vocab_size=50257, d_model=384, n_layers=12, n_heads=6, d_ff=1536,
                   max_seq_len=1024, norm="layernorm", mlp="gelu", position="rope",
                   tie_embeddings=True, use_bias=True),
    # GPT-2 small's shape, with RoPE instead of learned positions.
    "gpt2_124m": dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
                      max_seq_len=1024, norm="layernorm", mlp="gelu", position="rope",
                      tie_embeddings=True, use_bias=True),
    # SmolLM2-135M's shape (Llama: RMSNorm, SwiGLU, GQA 9/3, no biases, tied).
    "llama135m": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                      d_ff=1536, max_seq_len=8192, norm="rmsnorm", mlp="swiglu",
                      position="rope", rope_theta=100000.0, tie_embeddings=True,
                      use_bias=False),
    # Qwen2.5-0.5B's widths as a plain Llama (no q/k/v biases) with 25 layers instead
    # of 24: 509M parameters, the GPU decode benchmark's model of at least 0.5B.
    "llama500m": dict(vocab_size=151936, d_model=896, n_layers=25, n_heads=14, n_kv_heads=2,
                      d_ff=4864, max_seq_len=32768, norm="rmsnorm", mlp="swiglu",
                      position="rope", rope_theta=1000000.0, tie_embeddings=True,
                      use_bias=False, norm_eps=1e-6),
    # The offline default run: small enough to learn synthetic math on a laptop CPU.
    "small": dict(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, d_ff=512,
                  max_seq_len=256, norm="layernorm", mlp="gelu", position="rope",
                  tie_embeddings=True, use_bias=True),
    # Unit tests.
    "tiny": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                 max_seq_len=128, norm="rmsnorm", mlp="swiglu", position="rope",
                 tie_embeddings=False, use_bias=False),
}
