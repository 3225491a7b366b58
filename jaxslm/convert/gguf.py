"""GGUF (llama.cpp's format) -> jaxslm checkpoint: real pretrained small models,
quantized or not, offline.

    from jaxslm.convert import gguf_to_jaxslm
    gguf_to_jaxslm("models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf", "runs/smollm2")
    model_cfg, params, tok = jaxslm.load("runs/smollm2")

Command line: `python launch/convert.py gguf2jax --gguf FILE.gguf --out DIR`.

Steps: the header is checked by jaxslm's own bounded reader
(`gguf_header.read_header`: every length and offset against the file size)
before `gguf.GGUFReader` memory-maps the file; the metadata gives a Hugging
Face config.json (`gguf_arch.hf_config`) and so the `ModelConfig`; GGUF
tensor names map to Hugging Face names, which the family tables (`llama.py`,
`gemma3.py`) turn into jaxslm leaves with their shape checks. Every tensor's
shape is checked against the metadata before any data is read. Then, one
tensor at a time, it is dequantized to float32 with `gguf.quants.dequantize`
(F32, F16, BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, the K-quants Q2_K..Q6_K and the
other types gguf-py decodes; `supported_tensor_types()`), put in Hugging
Face's layout (`gguf_arch.to_hf_layout`), transformed by the table and cast to
`dtype`, so the process holds the converted tree plus one tensor. The tree
is written in place to a temporary directory renamed to `out` at the end:
nothing is left at `out` on failure. Tensors with NaN or infinite values
convert, with one warning naming them.

The tokenizer (`gguf_tokenizer`) and the Hugging Face config are kept in the
checkpoint, so `jaxslm_to_hf` exports it as the Hugging Face model
(Gemma 3 as `gemma3_text`). Supported architectures: `gguf_arch.ARCHITECTURES`.
"""

from __future__ import annotations

import functools
import os
import re
import warnings

import numpy as np

from jaxslm import checkpoint as ckpt
from jaxslm.convert import gguf_arch, gguf_header, gguf_tokenizer
from jaxslm.convert.checkpoints import DTYPES
from jaxslm.convert.registry import get_family
from jaxslm.convert.table import check_coverage, expand, expected_hf_shape, flat_shapes
from jaxslm.errors import UserError
from jaxslm.lora import nest_paths

# Types `gguf.quants.dequantize` reads besides its block-quantized ones.
_PLAIN = ("F32", "F16")


@functools.lru_cache(maxsize=1)
def supported_tensor_types() -> list[str]:
  """The GGUF tensor types a conversion dequantizes (those gguf-py can)."""
  import gguf
  from gguf import quants
  traits = getattr(quants, "_type_traits", {})
  names = set(_PLAIN) | {gguf.GGMLQuantizationType(t).name for t in traits}
  return sorted(names, key=lambda n: int(gguf.GGMLQuantizationType[n]))


def read_config(gguf_path: str, dtype: str = "float32"):
  """(header, Hugging Face config dict, ModelConfig) of a GGUF file; reads no tensor data
  except rope_freqs.weight."""
  header = gguf_header.read_header(gguf_path)
  return (header, *_config(header, None, dtype))


def _config(header: gguf_header.Header, tensors: dict | None, dtype: str):
  path = header.path
  if dtype not in DTYPES:
    raise UserError(f"dtype={dtype!r} is invalid: expected one of {DTYPES}.")
  freqs = None
  if "rope_freqs.weight" in header.tensors:
    freqs = _dequantize(header, header.tensors["rope_freqs.weight"], tensors)
  embd = header.tensors.get("token_embd.weight")
  hf = gguf_arch.hf_config(header.metadata, header.tensors, path, rope_freqs=freqs,
                           vocab_rows=embd.shape[0] if embd is not None else None)
  family = get_family(hf["model_type"], path)
  try:
    cfg = family.config_from_hf(hf).replace(dtype=dtype, param_dtype=dtype)
  except UserError as e:   # the family's or ModelConfig's check of a metadata value
    raise UserError(f"{path}: the metadata gives an invalid model: {e}") from e
  return hf, cfg


def _check_type(header: gguf_header.Header, info: gguf_header.TensorInfo, supported) -> None:
  name = gguf_header.type_name(info.type)
  if name not in supported:
    raise UserError(f"{header.path}: tensor {info.name!r} has type {name}, which cannot "
                    f"be dequantized; supported types: {', '.join(supported)}. Convert or "
                    "quantize the model again with one of them.")


def _dequantize(header: gguf_header.Header, info: gguf_header.TensorInfo,
                tensors: dict | None) -> np.ndarray:
  """Tensor `info` as a new float32 array (owning its memory, not a view of the
  file) in numpy (row-major) shape: its bytes from `tensors` ({name: gguf
  ReaderTensor}, see `_open_reader`), or memory-mapped from the file when None."""
  from gguf import GGMLQuantizationType, quants
  _check_type(header, info, supported_tensor_types())
  qtype = GGMLQuantizationType(info.type)
  if tensors is None:
    raw = np.memmap(header.path, np.uint8, "r", offset=info.offset, shape=(info.nbytes,))
  else:
    raw = tensors[info.name].data
  block, block_bytes = gguf_header.quant_sizes()[info.type]
  rows = info.nbytes // (info.dims[0] // block * block_bytes)
  raw = np.asarray(raw).view(np.uint8).reshape(rows, -1)
  if qtype.name == "F32":
    x = np.array(raw.view(np.float32))
  elif qtype.name == "F16":
    x = raw.view(np.float16).astype(np.float32)
  else:
    x = np.asarray(quants.dequantize(raw, qtype), np.float32)
  return x.reshape(info.shape)


def iter_tensors(gguf_path: str):
  """(name, float32 array in numpy shape) for every tensor of a GGUF file, in
  file order, after the header check; one tensor in memory at a time."""
  header = gguf_header.read_header(gguf_path)
  tensors = _open_reader(header)
  for info in header.tensors.values():
    yield info.name, _dequantize(header, info, tensors)


def _open_reader(header: gguf_header.Header) -> dict:
  """{name: gguf ReaderTensor} from `gguf.GGUFReader` (memory-mapped) on a file
  the header check passed, cross-checked with it."""
  import gguf
  reader = gguf.GGUFReader(header.path, "r")
  got = [(t.name, int(t.tensor_type), int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]
  want = [(t.name, t.type, t.offset, t.nbytes) for t in header.tensors.values()]
  if got != want:   # both read the same bytes: a difference is a bug in one of them
    raise RuntimeError(f"{header.path}: gguf.GGUFReader and jaxslm's header reader disagree "
                       "on the tensor table.")
  return {t.name: t for t in reader.tensors}


def _match(header, arch: str, entries, cfg) -> dict:
  """{GGUF tensor name: (HF name, Entry)}; missing / unexpected tensors named."""
  by_hf = {e.hf: e for e in entries}
  matched, unexpected = {}, []
  for name in header.tensors:
    if name in gguf_arch.CONFIG_TENSORS:
      continue
    hf_name = gguf_arch.hf_name(name, arch)
    if hf_name in by_hf:
      matched[name] = (hf_name, by_hf[hf_name])
    else:
      unexpected.append(name)
  have = {h for h, _ in matched.values()}
  inverse = {h: g for g, h in gguf_arch.NAMES[arch].items()}
  missing = [_gguf_name(e.hf, inverse) for e in entries if e.hf not in have]
  if missing or unexpected:
    parts = ([f"missing tensors {_few(missing)}"] if missing else []) + (
        [f"unexpected tensors {_few(unexpected)}"] if unexpected else [])
    raise UserError(f"{header.path}: the {arch} tensors do not match the metadata "
                    f"({cfg.n_layers} layers, tied output={cfg.tie_embeddings}): "
                    f"{'; '.join(parts)}. The file is incomplete or holds another model "
                    "variant than its metadata says.")
  return matched


def _gguf_name(hf_name: str, inverse: dict) -> str:
  m = re.search(r"\.(\d+)\.", hf_name)
  key = hf_name.replace(f".{m.group(1)}.", ".{i}.", 1) if m else hf_name
  g = inverse.get(key, hf_name)
  return g.replace("{i}", m.group(1)) if m else g


def _few(names: list[str], limit: int = 8) -> str:
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def gguf_to_jaxslm(gguf_path: str, out_dir: str, dtype: str = "float32") -> str:
  """Convert the GGUF file at `gguf_path` into a jaxslm checkpoint at `out_dir`
  (see the module docstring). Returns `out_dir`."""
  gguf_path = os.fspath(gguf_path)
  header = gguf_header.read_header(gguf_path)
  tensors = _open_reader(header)
  hf, cfg = _config(header, tensors, dtype)
  arch = header.metadata["general.architecture"]
  family = get_family(hf["model_type"], gguf_path)
  tok = gguf_tokenizer.tokenizer_from_gguf(
      header.metadata, gguf_path, cfg.vocab_size,
      name=os.path.splitext(os.path.basename(gguf_path))[0])
  # Only the spec is kept: the built tokenizer (a 262k-token vocabulary and its
  # merges are a few hundred MB) is dropped before the tensors are read.
  tok_spec, hf_meta = tok.spec(), _hf_meta(hf, tok)
  del tok
  shapes = flat_shapes(cfg)
  entries = expand(family.rules(cfg), cfg)
  check_coverage(entries, cfg, family)
  matched = _match(header, arch, entries, cfg)
  supported = supported_tensor_types()
  for name, (hf_name, entry) in matched.items():   # every shape and type before reading data
    _check_type(header, header.tensors[name], supported)
    got, want = header.tensors[name].shape, expected_hf_shape(entry, cfg, shapes)
    if tuple(got) != tuple(want):
      raise UserError(f"{gguf_path}: tensor {name!r} has shape {list(got)} (GGUF dims "
                      f"{list(header.tensors[name].dims)}), but the metadata implies "
                      f"{list(want)}. The tensors and the {arch}.* metadata disagree; the file "
                      "is damaged or was edited.")
  flat, bad = {}, []
  for name, (hf_name, entry) in matched.items():
    x = _dequantize(header, header.tensors[name], tensors)
    if not np.isfinite(x).all():
      bad.append(name)
    x = gguf_arch.to_hf_layout(name, x, arch, hf)
    outs = entry.rule.to_jax(x, cfg)
    # x is a fresh array, not a view of the file: a leaf that needs no transpose or
    # cast is kept as it is (the largest, the embedding, is copied no second time).
    flat.update({path: np.ascontiguousarray(y, dtype=shapes[path].dtype)
                 for path, y in zip(entry.jax, outs)})
    del x, outs
  del tensors
  if bad:
    warnings.warn(f"{gguf_path}: {len(bad)} tensors hold NaN or infinite values (converted "
                  f"as they are): {_few(bad)}.", stacklevel=2)
  meta = {"model": cfg.to_dict(), "tokenizer": tok_spec,
          "hf": {"model_type": hf["model_type"], "config": hf_meta},
          "converted_from": os.path.abspath(gguf_path),
          "gguf": {"architecture": arch, "name": _scalar(header.metadata.get("general.name")),
                   "file_type": _scalar(header.metadata.get("general.file_type"))}}
  return ckpt.save_params(out_dir, nest_paths(flat), meta, host_in_place=True)


def _scalar(v):
  """A metadata value kept in the checkpoint's meta: a str or int, else None."""
  return v if isinstance(v, (str, int)) and not isinstance(v, bool) else None


def _hf_meta(hf: dict, tok) -> dict:
  """The config.json kept for export, with the tokenizer's special ids."""
  eos = [tok.eos_id, *tok.extra_eos_ids]
  return {**hf, "bos_token_id": tok.bos_id, "eos_token_id": eos[0] if len(eos) == 1 else eos,
          "pad_token_id": tok.pad_id}
