"""The LoRA tree transforms (`LoraWeight`, add, merge, split, combine, count);
re-exported by `jaxslm.lora`, whose docstring is the guide."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxslm.errors import UserError

TARGET_PRESETS = {
    "qv": r"(^|/)attn/(q|v)_proj/kernel$",
    "attn": r"(^|/)attn/(q|k|v|o)_proj/kernel$",
    "all": r"(^|/)(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel$",
}
TRAINABLE = ("last", "adapters", "all")
FORMAT = "jaxslm-lora-adapters/1"


@struct.dataclass
class LoraWeight:
  """A kernel [in, out] with stacked adapters a[i] [in, r_i], b[i] [r_i, out].

  `scales` and `dropout` (rate on the input of the last adapter, applied only
  when `dense` gets a dropout key) are static: not leaves, part of the treedef.
  """
  w: Any
  a: tuple
  b: tuple
  scales: tuple = struct.field(pytree_node=False, default=())
  dropout: float = struct.field(pytree_node=False, default=0.0)

  @property
  def shape(self) -> tuple:
    return tuple(self.w.shape)

  @property
  def ranks(self) -> tuple:
    return tuple(a.shape[-1] for a in self.a)

  def delta(self) -> jax.Array:
    """sum_i scales[i] * a[i] @ b[i] in float32."""
    return sum(s * jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32),
                              precision=jax.lax.Precision.HIGHEST)
               for a, b, s in zip(self.a, self.b, self.scales))


def is_quantized(leaf) -> bool:
  """True for a `jaxslm.quant` kernel. Such a leaf can only exist once
  `jaxslm.quant` is imported, so this never imports it."""
  quant = sys.modules.get("jaxslm.quant")
  return quant is not None and bool(quant.is_quantized(leaf))


def dequantize(w, dtype) -> jax.Array:
  """A plain kernel in `dtype` from an array or a quantized kernel."""
  if is_quantized(w):
    return sys.modules["jaxslm.quant"].dequantize(w, dtype)
  return jnp.asarray(w).astype(dtype)


def _is_kernel_node(x) -> bool:
  return isinstance(x, LoraWeight) or is_quantized(x)


def _key_str(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def map_with_paths(tree, fn, is_leaf=_is_kernel_node):
  """`fn('/'-joined path, leaf)` over the leaves; LoraWeight and quantized kernels are leaves."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return jax.tree_util.tree_unflatten(
      treedef, [fn("/".join(_key_str(k) for k in path), x) for path, x in flat])


def flatten_paths(params) -> dict[str, Any]:
  """{'/'-joined path: leaf}; a LoraWeight or a quantized kernel is one leaf."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_kernel_node)
  return {"/".join(_key_str(k) for k in path): x for path, x in flat}


def nest_paths(flat: dict[str, Any]) -> dict:
  """The nested dict of a {'/'-joined path: leaf} dict (the inverse of `flatten_paths`)."""
  out: dict = {}
  for path, x in flat.items():
    *parents, last = path.split("/")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = x
  return out


def lora_paths(params) -> list[str]:
  """Paths of the LoRA-wrapped kernels, sorted."""
  return sorted(p for p, x in flatten_paths(params).items() if isinstance(x, LoraWeight))


def strip(params):
  """The base tree: every LoraWeight replaced by its base kernel (adapters dropped)."""
  return map_with_paths(params, lambda _, x: x.w if isinstance(x, LoraWeight) else x)


def _append(x, a, b, scales, dropout: float) -> LoraWeight:
  """`x` (a kernel or a LoraWeight) with adapters appended; `dropout` is the new last one's."""
  old = x if isinstance(x, LoraWeight) else LoraWeight(x, (), (), (), 0.0)
  return LoraWeight(old.w, old.a + tuple(a), old.b + tuple(b),
                    old.scales + tuple(float(v) for v in scales), float(dropout))


def _list_paths(params, limit: int = 60) -> str:
  paths = sorted(flatten_paths(params))
  more = f", ... ({len(paths) - limit} more)" if len(paths) > limit else ""
  return ", ".join(paths[:limit]) + more


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank r, scale alpha / r (alpha / sqrt(r) with `rslora`), dropout on the
  adapter input, `targets`: a preset ("qv", "attn", "all") or a regex searched
  in '/'-joined parameter paths (only 2-D `*/kernel` leaves are adapted)."""
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: str = "qv"
  rslora: bool = False

  def __post_init__(self):
    def bad(field, expected):
      raise UserError(f"LoraConfig.{field}={getattr(self, field)!r} is invalid: "
                      f"expected {expected}.")
    if not isinstance(self.rank, (int, np.integer)) or isinstance(self.rank, bool) or self.rank < 1:
      bad("rank", "an integer >= 1")
    if not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
      bad("alpha", "a number > 0")
    if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
      bad("dropout", "0 <= p < 1")
    if not isinstance(self.targets, str) or not self.targets:
      bad("targets", f"a preset {sorted(TARGET_PRESETS)} or a regex over parameter paths")
    try:
      re.compile(self.pattern)
    except re.error as e:
      bad("targets", f"a preset or a valid regex ({e})")

  @property
  def pattern(self) -> str:
    return TARGET_PRESETS.get(self.targets, self.targets)

  @property
  def scale(self) -> float:
    return float(self.alpha) / (math.sqrt(self.rank) if self.rslora else self.rank)


def add_adapter(params, cfg: LoraConfig, rng: jax.Array):
  """Wrap every 2-D `*/kernel` whose path matches `cfg.targets` in a
  LoraWeight, or append an adapter to one already wrapped. Adapters are
  float32 whatever the base's dtype (`dense` casts them to the compute dtype)."""
  flat = flatten_paths(params)
  pattern = re.compile(cfg.pattern)
  hits = sorted(p for p, x in flat.items() if pattern.search(p)
                and p.rsplit("/", 1)[-1] == "kernel" and len(getattr(x, "shape", ())) == 2)
  if not hits:
    raise UserError(f"LoRA targets {cfg.targets!r} (regex {cfg.pattern!r}) match no 2-D "
                    f"'*/kernel' parameter; use a preset {sorted(TARGET_PRESETS)} or a regex "
                    f"over these paths: {_list_paths(params)}")
  for p in hits:
    d_in, d_out = flat[p].shape
    if cfg.rank > min(d_in, d_out):
      raise UserError(f"LoRA rank {cfg.rank} is larger than min(in, out) = {min(d_in, d_out)} "
                      f"of {p} (shape {tuple(flat[p].shape)}); use rank <= {min(d_in, d_out)} "
                      f"or leave {p} out of targets.")
  keys = dict(zip(hits, jax.random.split(rng, len(hits))))

  def one(path, x):
    if path not in keys:
      return x
    base = x.w if isinstance(x, LoraWeight) else x
    d_in, d_out = base.shape
    dtype = jnp.float32   # whatever the base's dtype: bf16 adapters would lose small updates
    bound = 1.0 / math.sqrt(d_in)
    a = jax.random.uniform(keys[path], (d_in, cfg.rank), dtype, -bound, bound)
    return _append(x, [a], [jnp.zeros((cfg.rank, d_out), dtype)], [cfg.scale], cfg.dropout)
  return map_with_paths(params, one)


def merge(params):
  """Fold every adapter into its base: w + sum scale * a @ b, in float32, cast
  to the base dtype (a quantized base gives a float32 plain array)."""
  def one(_, x):
    if not isinstance(x, LoraWeight):
      return x
    w = dequantize(x.w, jnp.float32) + x.delta()
    return w if is_quantized(x.w) else w.astype(x.w.dtype)
  return map_with_paths(params, one)


def unmerge(merged, adapted):
  """Undo `merge`: the LoraWeight tree of `adapted` with each base set to
  merged - sum scale * a @ b (in float32). Plain leaves come from `merged`.
  Float rounding means the base matches the original to about one ulp of
  the merged value, not bit for bit. A quantized base cannot be recovered
  from a float kernel short of re-quantizing, so `adapted`'s is kept."""
  flat = flatten_paths(merged)

  def one(path, x):
    if path not in flat:
      raise UserError(f"unmerge: {path!r} is in the adapted tree but not in the merged one; "
                      f"pass the tree merge() returned for it.")
    m = flat[path]
    if not isinstance(x, LoraWeight):
      return m
    if tuple(m.shape) != x.shape:
      raise UserError(f"unmerge: {path} has shape {tuple(m.shape)} in the merged tree but "
                      f"{x.shape} in the adapted one; they must come from the same model.")
    if is_quantized(x.w):
      return x
    w = jnp.asarray(m, jnp.float32) - x.delta()
    return x.replace(w=w.astype(x.w.dtype))
  return map_with_paths(adapted, one)


def split(params, trainable: str = "last"):
  """(trainable_tree, frozen_tree); see the module doc. "last": the newest
  adapter of every LoraWeight; "adapters": all adapters; "all": every leaf
  (full fine-tuning; a quantized base stays frozen)."""
  if trainable not in TRAINABLE:
    raise UserError(f"trainable={trainable!r} is invalid: expected one of {TRAINABLE} "
                    f"(newest adapter, all adapters, every leaf).")
  train: dict[str, Any] = {}

  def one(path, x):
    if isinstance(x, LoraWeight):
      a, b = list(x.a), list(x.b)
      for i in (range(len(a)) if trainable != "last" else range(len(a) - 1, len(a))):
        train[f"{path}/a{i}"], train[f"{path}/b{i}"] = a[i], b[i]
        a[i] = b[i] = None
      w = x.w
      if trainable == "all" and not is_quantized(w):
        train[f"{path}/w"], w = w, None
      return x.replace(w=w, a=tuple(a), b=tuple(b))
    if trainable == "all" and not is_quantized(x):
      train[path] = x
      return None
    return x
  frozen = map_with_paths(params, one)
  if not train:
    raise UserError(f"split(trainable={trainable!r}) found nothing to train: the tree has no "
                    f"LoRA adapters. Call lora.add_adapter first, or use trainable='all'.")
  return nest_paths(train), frozen


def combine(trainable_tree, frozen_tree):
  """The params `split` took apart (traceable: use it inside the loss)."""
  flat = flatten_paths(trainable_tree)
  used: set[str] = set()

  def take(key):
    if key not in flat:
      raise UserError(f"combine: the trainable tree has no {key!r}; pass the two trees one "
                      f"split() call returned.")
    used.add(key)
    return flat[key]

  def one(path, x):
    if x is None:
      return take(path)
    if isinstance(x, LoraWeight):
      return x.replace(
          w=take(f"{path}/w") if x.w is None else x.w,
          a=tuple(take(f"{path}/a{i}") if v is None else v for i, v in enumerate(x.a)),
          b=tuple(take(f"{path}/b{i}") if v is None else v for i, v in enumerate(x.b)))
    return x
  params = map_with_paths(frozen_tree, one, is_leaf=lambda x: x is None or _is_kernel_node(x))
  extra = sorted(set(flat) - used)
  if extra:
    raise UserError(f"combine: trainable leaves {extra[:5]} have no place in the frozen tree; "
                    f"pass the two trees one split() call returned.")
  return params


def _size(x) -> int:
  if isinstance(x, LoraWeight):
    return math.prod(x.shape) + sum(math.prod(v.shape) for v in x.a + x.b)
  return math.prod(x.shape)


def count_params(params, trainable: str = "last") -> dict[str, Any]:
  """{"trainable", "total", "percent"}; total = base + adapters, a quantized
  kernel counted by its logical [in, out] elements. Works on
  `jax.eval_shape` trees."""
  total = sum(_size(x) for x in flatten_paths(params).values())
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(split(params, trainable)[0]))
  return {"trainable": n, "total": total, "percent": 100.0 * n / total}
