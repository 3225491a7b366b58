"""Conversion tables: Hugging Face tensor names <-> jaxslm parameter paths.

A family (one `model_type`) is a `Family`: how to read its `config.json`
into a `ModelConfig` and back, and a list of `Rule`s built for one config.
A rule ties one Hugging Face tensor to one or more jaxslm leaves:

    Rule(r"model.layers.{i}.self_attn.q_proj.weight", ("layers_{i}/attn/q_proj/kernel",),
         *LINEAR)                                     # torch [out, in] <-> kernel [in, out]
    Rule(r"transformer.h.{i}.attn.c_attn.weight",
         ("layers_{i}/attn/q_proj/kernel", "layers_{i}/attn/k_proj/kernel",
          "layers_{i}/attn/v_proj/kernel"), *split_columns(3))   # fused q|k|v, GPT-2 Conv1D

`{i}` is the layer index: the Hugging Face name becomes a regular
expression (`{i}` -> `(\\d+)`) to match tensors in a file, and a format
string to name them on export. `to_jax(x, cfg) -> tuple` (one array per
jaxslm path) and `to_hf(xs, cfg) -> array` are inverses, written against
`xp(x)`: numpy for host arrays (conversion runs on the host, tensor by
tensor, with no device copies), `jax.numpy` for tracers, so `jax.eval_shape`
derives each tensor's expected Hugging Face shape from the jaxslm shapes:
every tensor is checked before it is transformed, and a mismatch names the
key and both shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm.errors import UserError
from jaxslm.models import ModelConfig
from jaxslm.models.summary import param_shapes

FAMILIES: dict[str, "Family"] = {}


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str                      # Hugging Face tensor name, "{i}" for the layer index
  jax: tuple[str, ...]         # jaxslm paths ('/'-joined), "{i}" for the layer index
  to_jax: Callable[[Any, ModelConfig], tuple]
  to_hf: Callable[[tuple, ModelConfig], Any]

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf

  @property
  def pattern(self) -> re.Pattern:
    return re.compile(re.escape(self.hf).replace(re.escape("{i}"), r"(\d+)") + r"\Z")


def xp(*xs):
  """The array module for `xs`: numpy when every one is a host array (a
  memory-mapped tensor, a restored leaf), jax.numpy otherwise (jax arrays,
  and the tracers of `jax.eval_shape`). Rules written against it run on
  the host without device copies and still derive shapes abstractly."""
  return np if all(isinstance(x, np.ndarray) for x in xs) else jnp


def _identity_to_jax(x, cfg):
  return (x,)


def _identity_to_hf(xs, cfg):
  return xs[0]


def _transpose_to_jax(x, cfg):
  return (xp(x).transpose(x),)


def _transpose_to_hf(xs, cfg):
  return xp(*xs).transpose(xs[0])


COPY = (_identity_to_jax, _identity_to_hf)           # same layout both sides
LINEAR = (_transpose_to_jax, _transpose_to_hf)       # torch nn.Linear [out, in] <-> [in, out]


def split_columns(sizes: Callable[[ModelConfig], tuple[int, ...]], transpose: bool = False):
  """A fused tensor whose last axis (columns; rows of a torch Linear when
  `transpose`) concatenates several jaxslm leaves of `sizes(cfg)` columns."""
  def to_jax(x, cfg):
    m = xp(x)
    x = m.transpose(x) if transpose else x
    bounds = list(itertools.accumulate(sizes(cfg)))[:-1]
    return tuple(m.split(x, bounds, axis=-1))

  def to_hf(xs, cfg):
    m = xp(*xs)
    x = m.concatenate(xs, axis=-1)
    return m.transpose(x) if transpose else x
  return to_jax, to_hf


@dataclasses.dataclass(frozen=True)
class Family:
  """One Hugging Face `model_type`.

  config_from_hf(hf_config: dict) -> ModelConfig (float32; the caller sets dtypes)
  config_to_hf(cfg) -> dict of the config.json fields this family owns
  rules(cfg) -> list[Rule]
  ignore: regexes of tensors that carry nothing jaxslm needs (causal-mask
    buffers, RoPE caches); ignore_tied: those ignored when embeddings are tied.
  normalize: a file's tensor name -> the name the rules use.
  text_config: for a multimodal model_type whose text model is converted (the
    rest skipped by `ignore`): its config.json -> the text model's config.json,
    kept in the checkpoint, which then exports as that text model.
  """
  model_type: str
  architecture: str
  config_from_hf: Callable[[dict], ModelConfig]
  config_to_hf: Callable[[ModelConfig], dict]
  rules: Callable[[ModelConfig], list[Rule]]
  ignore: tuple[str, ...] = (r".*rotary_emb\.inv_freq",)
  ignore_tied: tuple[str, ...] = (r"lm_head\.weight",)
  # Keys of an original config.json that jaxslm re-derives on export.
  owned_keys: tuple[str, ...] = ()
  # A file's tensor name -> the name the rules use (e.g. a missing prefix).
  normalize: Callable[[str], str] = str
  text_config: Callable[[dict], dict] | None = None

  def ignored(self, key: str, cfg: ModelConfig) -> bool:
    patterns = self.ignore + (self.ignore_tied if cfg.tie_embeddings else ())
    return any(re.fullmatch(p, key) for p in patterns)


def register(family: Family) -> Family:
  FAMILIES[family.model_type] = family
  return family


def flat_shapes(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """{'/'-joined path: ShapeDtypeStruct} of the params `cfg` needs."""
  flat, _ = jax.tree_util.tree_flatten_with_path(param_shapes(cfg))
  return {"/".join(str(k.key) for k in path): x for path, x in flat}


@dataclasses.dataclass(frozen=True)
class Entry:
  """A rule applied to one layer (or to none): concrete names on both sides."""
  rule: Rule
  hf: str
  jax: tuple[str, ...]


def expand(rules: list[Rule], cfg: ModelConfig) -> list[Entry]:
  out = []
  for rule in rules:
    layers = range(cfg.n_layers) if rule.per_layer else [None]
    for i in layers:
      fmt = (lambda s: s.replace("{i}", str(i))) if i is not None else (lambda s: s)
      out.append(Entry(rule, fmt(rule.hf), tuple(fmt(p) for p in rule.jax)))
  return out


def check_coverage(entries: list[Entry], cfg: ModelConfig, family: Family) -> None:
  """Every jaxslm leaf is produced by exactly one entry (a table bug otherwise)."""
  shapes = flat_shapes(cfg)
  produced = [p for e in entries for p in e.jax]
  missing = sorted(set(shapes) - set(produced))
  extra = sorted(set(produced) - set(shapes))
  if missing or extra or len(produced) != len(set(produced)):
    raise AssertionError(f"{family.model_type} table does not cover this config: jaxslm leaves "
                         f"without a rule {missing}, rule targets that do not exist {extra}.")


def expected_hf(entry: Entry, cfg: ModelConfig, shapes: dict) -> jax.ShapeDtypeStruct:
  """The shape and dtype `entry.rule.to_hf` gives for the jaxslm `shapes`."""
  ins = tuple((tuple(shapes[p].shape), jnp.dtype(shapes[p].dtype)) for p in entry.jax)
  return _eval_to_hf(entry.rule, cfg, ins)


@functools.lru_cache(maxsize=1024)
def _eval_to_hf(rule: Rule, cfg: ModelConfig, ins: tuple) -> jax.ShapeDtypeStruct:
  # Cached: every layer's entry of a rule has the same shapes (one trace, not one per layer).
  return jax.eval_shape(lambda *xs: rule.to_hf(xs, cfg),
                        *[jax.ShapeDtypeStruct(s, d) for s, d in ins])


def expected_hf_shape(entry: Entry, cfg: ModelConfig, shapes: dict) -> tuple[int, ...]:
  return tuple(expected_hf(entry, cfg, shapes).shape)


def match_keys(keys, entries: list[Entry], cfg: ModelConfig, family: Family) -> dict:
  """{file's tensor name: Entry}; names what is missing or unexpected.

  Each name is matched against the rules' patterns (`{i}` any layer), so a
  tensor of a layer the config does not have is reported as unexpected."""
  by_name = {e.hf: e for e in entries}
  patterns = [r.pattern for r in family.rules(cfg)]
  matched, unexpected = {}, []
  for key in keys:
    name = family.normalize(key)
    if name in by_name:
      matched[key] = by_name[name]
    elif not family.ignored(name, cfg):
      hint = " (a layer beyond num_layers)" if any(p.match(name) for p in patterns) else ""
      unexpected.append(key + hint)
  missing = sorted(set(by_name) - {e.hf for e in matched.values()})
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing tensors {_few(missing)}")
    if unexpected:
      parts.append(f"unexpected tensors {_few(sorted(unexpected))}")
    raise UserError(f"The {family.model_type} checkpoint does not match its config.json "
                    f"({cfg.n_layers} layers, tie_word_embeddings={cfg.tie_embeddings}): "
                    f"{'; '.join(parts)}. Check that the weights and config.json come from "
                    "the same model.")
  return matched


def _few(names: list[str], limit: int = 12) -> str:
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def check_shape(key: str, got: tuple, want: tuple, entry: Entry) -> None:
  if tuple(got) != tuple(want):
    raise UserError(f"Tensor {key!r} has shape {tuple(got)}, but config.json implies "
                    f"{tuple(want)} (for jaxslm {', '.join(entry.jax)}). The weights do not "
                    "belong to this config.json; use the config the checkpoint was saved with.")


def nbytes(shape, dtype) -> int:
  return math.prod(shape) * jnp.dtype(dtype).itemsize
