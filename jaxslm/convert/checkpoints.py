"""Whole-checkpoint conversion, Hugging Face directory <-> jaxslm checkpoint.

    hf_to_jaxslm("models/SmolLM2-135M", "runs/smol", dtype="bfloat16")
    model_cfg, params, tok = jaxslm.load("runs/smol")
    jaxslm_to_hf("runs/smol", "exports/smol")     # transformers.AutoModelForCausalLM loads it

A converted checkpoint is self-contained: params, the `ModelConfig`, the
tokenizer spec (a tokenizer.json is embedded, chat template included, with
`add_bos_default`: whether transformers prepends BOS to plain text) and
meta["hf"] = {"model_type", "config"} (the original config.json, so an export
keeps fields jaxslm does not model, such as token ids). A checkpoint without
meta["hf"] (trained in jaxslm) exports as the first family whose config.json
describes the same model exactly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm import checkpoint as ckpt
from jaxslm import tokenizers
from jaxslm.convert import checks, files, store
from jaxslm.convert.registry import get_family
from jaxslm.convert.table import (FAMILIES, Entry, Family, check_coverage, check_shape, expand,
                                  expected_hf, expected_hf_shape, flat_shapes, match_keys, nbytes)
from jaxslm.errors import UserError
from jaxslm.lora.tree import nest_paths
from jaxslm.tokenizers import hf_bos
from jaxslm.models import ModelConfig

DTYPES = ("float32", "bfloat16")
# ModelConfig fields that say how to run a model, not what it computes.
_RUNTIME_FIELDS = ("dtype", "param_dtype", "init_std", "remat", "attention_impl")


def config_from_hf(config_json: dict | str, dtype: str = "float32") -> ModelConfig:
  """The `ModelConfig` of a Hugging Face config (a dict, a config.json path or its directory)."""
  if isinstance(config_json, (str, os.PathLike)):
    path = os.fspath(config_json)
    config_json = files.read_config(os.path.dirname(path) if path.endswith(".json") else path)
  if dtype not in DTYPES:
    raise UserError(f"dtype={dtype!r} is invalid: expected one of {DTYPES}.")
  checks.check_config_types(config_json, "config.json")
  family = get_family(config_json.get("model_type"))
  return family.config_from_hf(config_json).replace(dtype=dtype, param_dtype=dtype)


def hf_to_jaxslm(hf_dir: str, out_dir: str, dtype: str = "float32", tokenizer=None) -> str:
  """Convert a Hugging Face model directory into a jaxslm checkpoint at `out_dir`.

  Tensors are read one at a time (memory-mapped), transformed and cast to
  `dtype` on the host, and the mapping dropped before the next one, so the
  process holds the converted tree plus one tensor; the tree is written
  in place (`save_params(..., host_in_place=True)`), with no second copy.
  `tokenizer`: a `Tokenizer`, a name or path for `get_tokenizer`, or None to
  use the directory's tokenizer.json. Returns `out_dir`.
  """
  hf = files.read_config(hf_dir)
  config_path = os.path.join(os.path.abspath(hf_dir), files.CONFIG)
  family = get_family(hf.get("model_type"), config_path)
  flat, nonfinite = {}, {}
  # Every header is validated on opening, and the config's sizes bounded by the
  # tensors present, before anything is built in proportion to the config.
  with files.SafetensorsReader(hf_dir) as reader:
    checks.check_config_types(hf, config_path)
    checks.check_config_sizes(hf, config_path, {k: reader.shape(k) for k in reader.keys()})
    cfg = config_from_hf(hf, dtype)
    # Every tensor the config implies must be present before the model's
    # shapes are derived (a cost per layer): a config that claims more layers
    # than the file holds fails here, naming what is missing.
    entries = expand(family.rules(cfg), cfg)
    matched = match_keys(reader.keys(), entries, cfg, family)
    tok = _tokenizer(hf_dir, tokenizer)
    shapes = flat_shapes(cfg)
    check_coverage(entries, cfg, family)
    for key, entry in matched.items():   # every shape first: fail before reading anything
      check_shape(key, reader.shape(key), expected_hf_shape(entry, cfg, shapes), entry)
    for key, entry in matched.items():   # C-ordered copies: nothing keeps the mapping alive
      outs = entry.rule.to_jax(reader.get(key), cfg)
      flat.update({path: np.array(x, dtype=shapes[path].dtype, order="C")
                   for path, x in zip(entry.jax, outs)})
      del outs
      counts = [checks.nonfinite(flat[path]) for path in entry.jax]
      nonfinite[key] = (sum(c[0] for c in counts), sum(c[1] for c in counts))
  checks.warn_nonfinite(nonfinite, len(matched), os.path.abspath(hf_dir))
  text = family.text_config(hf) if family.text_config else None   # a multimodal checkpoint
  meta = {"model": cfg.to_dict(), "tokenizer": tok.spec(),
          "hf": ({"model_type": family.model_type, "config": hf} if text is None
                 else {"model_type": text["model_type"], "config": text}),
          "converted_from": os.path.abspath(hf_dir)}
  return ckpt.save_params(out_dir, nest_paths(flat), meta, host_in_place=True)


def jaxslm_to_hf(checkpoint: str, out_dir: str, *, model_type: str | None = None,
                 max_shard_bytes: int = 2 << 30) -> str:
  """Export a jaxslm checkpoint (anything `jaxslm.load` opens) as a Hugging
  Face directory: config.json, safetensors (sharded above `max_shard_bytes`)
  and the tokenizer files: tokenizer.json and tokenizer_config.json (for a
  SentencePiece model, translated and checked to encode alike, plus its
  tokenizer.model); a tiktoken tokenizer gets none, with a warning. LoRA adapters are
  merged and quantized kernels dequantized first. Returns `out_dir`.

  A plain checkpoint (a converted model, a pretraining run) streams: a few
  tensors are restored at a time (as host arrays), transformed and written,
  so the process never holds the whole model. Fine-tuned ones (adapters to
  merge) are loaded whole first."""
  step_dir = ckpt.resolve_step_dir(checkpoint)
  meta = ckpt.read_step_meta(step_dir)
  if "model" not in meta or "finetune" in meta:
    from jaxslm.loading import load
    loaded = load(checkpoint)
    return export(loaded.model_cfg, loaded.params, loaded.tokenizer, out_dir,
                  hf_meta=loaded.meta.get("hf"), model_type=model_type,
                  max_shard_bytes=max_shard_bytes)
  cfg = ModelConfig.from_dict(meta["model"])
  shapes = flat_shapes(cfg)

  def restore(batches):
    return store.read_batched(step_dir, shapes, batches)
  return _export(cfg, shapes, restore, tokenizers.from_spec(meta["tokenizer"]), out_dir,
                 hf_meta=meta.get("hf"), model_type=model_type, max_shard_bytes=max_shard_bytes)


def export(cfg: ModelConfig, params, tok, out_dir: str, *, hf_meta: dict | None = None,
           model_type: str | None = None, max_shard_bytes: int = 2 << 30) -> str:
  """`jaxslm_to_hf` for a config and params in memory (e.g. in a notebook)."""
  from jaxslm import lora
  params = lora.map_with_paths(lora.merge(params), lambda _, x: (
      lora.dequantize(x, jnp.float32) if lora.is_quantized(x) else x))
  flat = lora.flatten_paths(params)
  del params
  shapes = {p: jax.ShapeDtypeStruct(x.shape, x.dtype) for p, x in flat.items()}

  def host(batches):   # one leaf at a time on the host (no copy for CPU arrays)
    return ({p: np.asarray(flat[p]) for p in batch} for batch in batches)
  return _export(cfg, shapes, host, tok, out_dir, hf_meta=hf_meta, model_type=model_type,
                 max_shard_bytes=max_shard_bytes)


# Leaves restored at once when exporting a checkpoint (bounds the memory in flight).
EXPORT_BATCH_BYTES = 64 << 20


def _export(cfg: ModelConfig, shapes: dict, leaves, tok, out_dir: str, *, hf_meta, model_type,
            max_shard_bytes: int) -> str:
  """Write the Hugging Face directory; `leaves(batches)` yields {path: host
  array} for each batch of jaxslm paths, in the order the files need them."""
  model_type = model_type or (hf_meta or {}).get("model_type")
  family = get_family(model_type, "the checkpoint") if model_type else _infer_family(cfg)
  hf_config = _hf_config(cfg, family, hf_meta, tok, shapes)
  hf_tok = _hf_tokenizer(tok)   # before any file: a tokenizer that cannot be written fails now
  entries = expand(family.rules(cfg), cfg)
  check_coverage(entries, cfg, family)
  specs = [files.TensorSpec(e.hf, *_shape_dtype(expected_hf(e, cfg, shapes))) for e in entries]
  plan = files.plan_files(specs, max_shard_bytes)
  by_name = {e.hf: e for e in entries}
  order = [by_name[s.name] for _, fs in plan for s in fs]
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir!r} already exists; choose a new directory or remove it.")
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=os.path.dirname(out_dir))
  try:
    files.write_planned(tmp, plan, _hf_tensors(order, cfg, shapes, leaves),
                        order=[e.hf for e in entries])
    files.write_json(os.path.join(tmp, files.CONFIG), hf_config)
    if hf_tok is not None:
      hf_tok.save(tmp)
      if isinstance(tok, tokenizers.SentencePieceTokenizer):
        tok.save(os.path.join(tmp, "tokenizer.model"))   # the original, for sentencepiece users
    else:
      warnings.warn(f"The tokenizer {tok.name!r} ({type(tok).__name__}) has no tokenizer.json "
                    f"form; {out_dir} gets no tokenizer files: add the Hugging Face tokenizer "
                    f"that encodes as {tok.name!r} does (for tiktoken's r50k_base, GPT-2's).",
                    stacklevel=3)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def _hf_tokenizer(tok) -> tokenizers.HFTokenizer | None:
  """The tokenizer as a tokenizer.json tokenizer: itself, a SentencePiece model
  translated and checked (`jaxslm.tokenizers.sp_export`), or None (tiktoken)."""
  if isinstance(tok, tokenizers.HFTokenizer):
    return tok
  if isinstance(tok, tokenizers.SentencePieceTokenizer):
    from jaxslm.tokenizers.sp_export import to_hf_tokenizer
    return to_hf_tokenizer(tok)
  return None


def _hf_tensors(order: list[Entry], cfg: ModelConfig, shapes: dict, leaves):
  """Each entry's Hugging Face tensor, in `order`; leaves fetched in batches
  of about EXPORT_BATCH_BYTES and dropped once their tensor is made."""
  from jaxslm.convert.files import plan_shards
  sizes = [(i, sum(nbytes(shapes[p].shape, shapes[p].dtype) for p in e.jax))
           for i, e in enumerate(order)]
  batches = [[order[i] for i in group] for group in plan_shards(sizes, EXPORT_BATCH_BYTES)]
  fetched = leaves([p for e in batch for p in e.jax] for batch in batches)
  for batch in batches:
    got = next(fetched)
    for e in batch:
      yield e.rule.to_hf(tuple(got.pop(p) for p in e.jax), cfg)
    del got


def _shape_dtype(x: jax.ShapeDtypeStruct) -> tuple:
  return tuple(x.shape), np.dtype(x.dtype)


def _semantic(cfg: ModelConfig) -> dict:
  """The fields that decide what a config computes, defaults resolved."""
  d = cfg.to_dict()
  for f in _RUNTIME_FIELDS:
    d.pop(f)
  d.update(n_kv_heads=cfg.num_kv_heads, head_dim=cfg.dim_per_head, qkv_bias=cfg.has_qkv_bias,
           o_bias=cfg.has_o_bias, attn_scale_dim=cfg.attn_scale_dim or cfg.dim_per_head)
  # The sliding-window layers' RoPE: rope_local_theta=None means rope_theta and rope_scaling.
  sliding = [i for i in range(cfg.n_layers) if cfg.layer_window(i) is not None]
  if not sliding:   # every layer global: the same as no sliding window
    d.pop("rope_local_theta")
    d.update(sliding_window=None, global_layers=())
  elif cfg.rope_local_theta is None and not cfg.rope_scaling:
    d["rope_local_theta"] = cfg.rope_theta
  if cfg.position != "rope":
    d.pop("rope_theta"), d.pop("rope_scaling"), d.pop("partial_rotary_factor")
    d.pop("rope_local_theta", None)
  return d


def _expressible(cfg: ModelConfig, family: Family) -> list[str]:
  """Fields where `family`'s config.json cannot say what `cfg` says."""
  try:
    back = family.config_from_hf(family.config_to_hf(cfg))
  except UserError as e:
    return [str(e)]
  want, got = _semantic(cfg), _semantic(back)
  return [f"{k}={want[k]!r} (would read back as {got.get(k)!r})" for k in want
          if want[k] != got.get(k)]


def _infer_family(cfg: ModelConfig) -> Family:
  reasons = {}
  for family in FAMILIES.values():
    bad = _expressible(cfg, family)
    if not bad:
      return family
    reasons[family.model_type] = bad[:3]
  raise UserError(f"No supported Hugging Face architecture expresses this model exactly: "
                  f"{reasons}. Supported model types: {sorted(FAMILIES)}.")


def _hf_config(cfg: ModelConfig, family: Family, hf_meta: dict | None, tok, shapes: dict) -> dict:
  bad = _expressible(cfg, family)
  if bad:
    raise UserError(f"A {family.model_type} config.json cannot express this model: "
                    f"{'; '.join(bad)}.")
  base = dict((hf_meta or {}).get("config") or {})
  for key in family.owned_keys + ("torch_dtype", "dtype", "transformers_version"):
    base.pop(key, None)
  if not hf_meta:
    eos = list(getattr(tok, "eos_ids", ())) or [tok.eos_id]
    base.update(bos_token_id=tok.bos_id, eos_token_id=eos if len(eos) > 1 else eos[0],
                pad_token_id=tok.pad_id)
  dtypes = {str(x.dtype) for x in shapes.values()}
  return {**base, **family.config_to_hf(cfg), "model_type": family.model_type,
          "architectures": [family.architecture],
          "torch_dtype": "bfloat16" if dtypes == {"bfloat16"} else "float32"}


def _tokenizer(hf_dir: str, tokenizer) -> tokenizers.Tokenizer:
  if isinstance(tokenizer, tokenizers.Tokenizer):
    return tokenizer
  if tokenizer is not None:
    return tokenizers.get_tokenizer(tokenizer)
  if os.path.lexists(os.path.join(hf_dir, "tokenizer.json")):
    return tokenizers.HFTokenizer.from_dir(hf_dir)
  sp_model = os.path.join(hf_dir, "tokenizer.model")
  if os.path.lexists(sp_model):   # SentencePiece only (older Gemma / Llama 2 repos)
    tok = tokenizers.SentencePieceTokenizer.from_file(sp_model)   # a damaged one: error only
    warnings.warn(f"{hf_dir!r} has tokenizer.model but no tokenizer.json: using the "
                  "SentencePiece model; its chat template (if any) is not carried over.",
                  stacklevel=3)
    tcfg = files.read_json(os.path.join(hf_dir, "tokenizer_config.json"),
                           "tokenizer_config.json") or {}
    hf = files.read_json(os.path.join(hf_dir, files.CONFIG), "config.json")
    if hf_bos.adds_bos(None, tcfg, tok.bos_id, model_config=hf):   # as transformers reads it
      tok = tokenizers.SentencePieceTokenizer(tok.model_proto, name=tok.name, add_bos_default=True)
    return tok
  raise UserError(f"{hf_dir!r} has no tokenizer.json or tokenizer.model; pass tokenizer=... "
                  "(a tokenizer.json path, 'gpt2', or a SentencePiece '.model' file).")
