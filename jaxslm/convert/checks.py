"""Plausibility of a Hugging Face model against its own weights.

    check_config_types(hf_config, config_path)           # numbers where numbers are read
    check_config_sizes(hf_config, config_path, shapes)   # before building anything from it
    warn_nonfinite({key: array}, where)                  # NaN / inf weights, named

A config.json is read before the weights it describes, and a config that
says 10**9 layers would have a converter build per-layer tables (and trace
a model) in proportion to it. `check_config_sizes` first asks that every
size field is a positive integer, then bounds each by the tensors actually
present: no more layers than distinct layer indices among the tensor
names, and no width (hidden, intermediate, vocab, heads, head size) above
the largest tensor dimension. The exact per-tensor shapes are checked later
against the family's table; this only keeps an absurd value from costing
time or memory first.

Weights holding NaN or infinity still convert (a user may want to inspect
them), with one warning that says how many tensors and which.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from jaxslm.errors import UserError

# Layer counts and widths under the names the supported families use.
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
WIDTH_KEYS = ("hidden_size", "n_embd", "intermediate_size", "n_inner", "vocab_size",
              "num_attention_heads", "n_head", "num_key_value_heads", "head_dim")
_INDEX = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")
_CHUNK = 1 << 22   # elements scanned at once for NaN / inf (bounds the temporary masks)


def _configs(hf: Mapping) -> list[tuple[str, Mapping]]:
  """The config and the text model's config inside it (multimodal checkpoints)."""
  out = [("", hf)]
  if isinstance(hf.get("text_config"), Mapping):
    out.append(("text_config.", hf["text_config"]))
  return out


def layer_count(names: Iterable[str]) -> int:
  """The number of distinct integers that appear as a dotted component of
  the tensor names ("model.layers.7.mlp..." -> 7): an upper bound on the
  layers any reading of these tensors can have, which a file can raise only
  by holding more tensors (a name like "layers.999999" counts once)."""
  return len({int(m.group(1)) for name in names for m in _INDEX.finditer(name)})


def check_config_sizes(hf: Mapping, where: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
  """UserError when a size field of the config `hf` (read from `where`) is
  not a positive integer or exceeds what the tensors `shapes` ({name: shape})
  can hold; see the module doc."""
  layers = layer_count(shapes)
  widest = max((d for s in shapes.values() for d in s), default=0)
  fix = ("config.json and the weights come from different models, or config.json was edited; "
         "use the config.json saved with these weights")
  for prefix, cfg in _configs(hf):
    for key in LAYER_KEYS + WIDTH_KEYS:
      value = cfg.get(key)
      if value is None:
        continue
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{where}: {prefix}{key}={value!r} is not a positive integer; {fix}.")
      if key in LAYER_KEYS and value > layers:
        held = (f"tensors of at most {layers} layers ({layers} distinct layer indices in "
                "their names)") if layers else "no per-layer tensors"
        raise UserError(f"{where}: {prefix}{key}={value}, but the weights hold {held}; {fix}.")
      if key in WIDTH_KEYS and value > widest:
        raise UserError(f"{where}: {prefix}{key}={value} is larger than every dimension of "
                        f"every tensor in the weights (the largest is {widest}); {fix}.")


# Fields the families read as numbers (None is no value for the first group),
# and the RoPE settings they read as objects.
NUMBER_KEYS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta",
               "rotary_emb_base", "partial_rotary_factor", "rotary_pct", "rope_local_base_freq")
NULLABLE_NUMBER_KEYS = ("query_pre_attn_scalar", "final_logit_softcapping",
                        "attn_logit_softcapping", "sliding_window", "max_window_layers",
                        "max_position_embeddings", "n_positions")
POSITIVE_KEYS = ("rope_theta", "rotary_emb_base", "rope_local_base_freq")
FRACTION_KEYS = ("partial_rotary_factor", "rotary_pct")
ROPE_KEYS = ("rope_scaling", "rope_parameters")
# RoPE settings that divide or scale frequencies: positive numbers, ints within int32.
ROPE_POSITIVE = ("factor", "high_freq_factor", "low_freq_factor",
                 "original_max_position_embeddings", "rope_theta", "attention_factor",
                 "beta_fast", "beta_slow")


def check_config_types(hf: Mapping, where: str) -> None:
  """UserError when a numeric field of the config is not a finite number, or
  a RoPE setting is not an object of such numbers (its type a string)."""
  fix = "restore the config.json the model was saved with"
  for prefix, cfg in _configs(hf):
    for key in NUMBER_KEYS + NULLABLE_NUMBER_KEYS:
      value = cfg.get(key, 1)
      if not (_finite(value) or (value is None and key in NULLABLE_NUMBER_KEYS)):
        raise UserError(f"{where}: {prefix}{key}={value!r} is not a finite number; {fix}.")
      if key in POSITIVE_KEYS and not value > 0:
        raise UserError(f"{where}: {prefix}{key}={value!r} must be positive; {fix}.")
      if key in FRACTION_KEYS and not 0 < value <= 1:
        raise UserError(f"{where}: {prefix}{key}={value!r} must be in (0, 1] (the share of "
                        f"each head that is rotated); {fix}.")
    for key in ROPE_KEYS:
      rope = cfg.get(key)
      if rope is None:
        continue
      if not isinstance(rope, Mapping):
        raise UserError(f"{where}: {prefix}{key}={rope!r} is not an object of RoPE settings; "
                        f"{fix}.")
      # One object, or one per attention type ({"full_attention": {...}, ...}: Gemma 3).
      nested = {k: v for k, v in rope.items() if isinstance(v, Mapping)}
      if nested and len(nested) == len(rope):
        for k, v in nested.items():
          _check_rope(v, f"{prefix}{key}[{k!r}]", where, fix)
      else:
        _check_rope(rope, f"{prefix}{key}", where, fix)


def _check_rope(rope: Mapping, name: str, where: str, fix: str) -> None:
  for k, v in rope.items():
    if k in ("rope_type", "type"):
      ok = isinstance(v, str)
    elif k in ROPE_POSITIVE:
      ok = _finite(v) and v > 0 and not (isinstance(v, int) and v >= 2**31)
    else:
      ok = (v is None or isinstance(v, (bool, str)) or _finite(v)
            or (isinstance(v, list) and all(map(_finite, v))))
    if not ok:
      want = "a positive number" if k in ROPE_POSITIVE else "a number or a list of numbers"
      raise UserError(f"{where}: {name}[{k!r}]={v!r} is not a valid RoPE setting ({want}); "
                      f"{fix}.")
  low, high = rope.get("low_freq_factor"), rope.get("high_freq_factor")
  if low is not None and high is not None and low >= high:
    raise UserError(f"{where}: {name} has low_freq_factor={low} >= high_freq_factor={high}; "
                    f"the llama3 RoPE interpolation needs low < high; {fix}.")


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def nonfinite(x: np.ndarray) -> tuple[int, int]:
  """(NaN count, +-inf count) of a floating array, scanned in chunks; (0, 0)
  for integer and boolean arrays. A chunk whose sum is finite has neither
  (NaN and inf propagate through a sum), so clean weights cost one summing
  pass; bfloat16 is read on its bits (an all-ones exponent), other
  ml_dtypes floats through float32."""
  x = np.asarray(x)
  if x.dtype.kind in "biu" or x.size == 0:
    return 0, 0
  flat = np.ascontiguousarray(x).reshape(-1)
  nan = inf = 0
  with np.errstate(all="ignore"):   # a sum that overflows or meets inf - inf is expected
    for i in range(0, flat.size, _CHUNK):
      nan, inf = _count(flat[i:i + _CHUNK], nan, inf)
  return nan, inf


def _count(chunk: np.ndarray, nan: int, inf: int) -> tuple[int, int]:
  import ml_dtypes
  if chunk.dtype == ml_dtypes.bfloat16:
    bits = chunk.view(np.uint16)
    special = (bits & np.uint16(0x7F80)) == np.uint16(0x7F80)
    if special.any():
      n = int(np.count_nonzero(special & ((bits & np.uint16(0x007F)) != 0)))
      nan, inf = nan + n, inf + int(np.count_nonzero(special)) - n
    return nan, inf
  if chunk.dtype.kind not in "fc":   # float8 and other ml_dtypes floats
    chunk = chunk.astype(np.float32)
  elif np.isfinite(chunk.sum(dtype=np.result_type(chunk.dtype, np.float32))):
    return nan, inf   # an overflowing sum of finite values falls through to the exact count
  return (nan + int(np.count_nonzero(np.isnan(chunk))),
          inf + int(np.count_nonzero(np.isinf(chunk))))


def nonfinite_message(counts: Mapping[str, tuple[int, int]], total: int, where: str,
                      limit: int = 6) -> str | None:
  """One line naming the tensors with NaN / inf values, or None when none has any."""
  bad = [(k, n, i) for k, (n, i) in counts.items() if n or i]
  if not bad:
    return None
  parts = [f"{k} ({_counts(n, i)})" for k, n, i in bad[:limit]]
  more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
  return (f"{len(bad)} of {total} tensors in {where} hold NaN or infinite values: "
          f"{', '.join(parts)}{more}. The model will compute NaN; check the source of the "
          "weights (a diverged run or a damaged file) before using it.")


def _counts(nan: int, inf: int) -> str:
  return ", ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if p)


def warn_nonfinite(counts: Mapping[str, tuple[int, int]], total: int, where: str,
                   stacklevel: int = 3) -> None:
  message = nonfinite_message(counts, total, where)
  if message:
    warnings.warn(message, stacklevel=stacklevel)
