"""Token cache: tokenize a corpus once into memory-mapped train/val token files.

Layout (one directory per corpus x tokenizer x split setting)::

  <cache_dir>/tokens-<key>/
    train.bin   raw little-endian uint16 (vocab_size <= 65536) or uint32 token ids
    val.bin     same dtype
    meta.json   dtype, token and document counts, source, tokenizer, val rule

``cache_dir`` is ``data.cache_dir``, else ``$JAXSLM_CACHE``, else
``~/.cache/jaxslm``. ``key`` is the sha256 of (``sources.source_key``,
``tokenizer.spec()``, ``val_fraction``, ``FORMAT_VERSION``). Every document is
followed by ``tokenizer.eos_id``. A cache is built in a temporary sibling
directory and moved into place with ``os.replace``, so a directory named
``tokens-<key>`` is always complete.

Validation split: document ``i`` (counting from 0 in source order) goes to val
iff ``i % period == 0`` with ``period = round(1 / val_fraction)``. This needs no
total count (works while streaming), is deterministic, and puts at least one
document (the first) in val.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Callable

import numpy as np

from jaxslm.data import sources
from jaxslm.errors import UserError

FORMAT_VERSION = 1
ENCODE_CHUNK_DOCS = 1024
_LOG_EVERY_DOCS = 100_000


@dataclasses.dataclass(frozen=True)
class TokenDataset:
  """Tokenized corpus: read-only memory-mapped 1-D token arrays plus metadata."""

  train: np.memmap
  val: np.memmap
  meta: dict[str, Any]
  path: str


def cache_root(data_cfg) -> str:
  """The directory holding token caches (``data.cache_dir``, $JAXSLM_CACHE, ~/.cache/jaxslm)."""
  root = data_cfg.cache_dir or os.environ.get("JAXSLM_CACHE") or "~/.cache/jaxslm"
  return os.path.abspath(os.path.expanduser(root))


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 when every id fits (vocab_size <= 65536), else uint32; little-endian."""
  if vocab_size <= 0:
    raise UserError(f"tokenizer vocab_size={vocab_size} must be positive.")
  if vocab_size > 2**32:
    raise UserError(f"tokenizer vocab_size={vocab_size} does not fit uint32 token files.")
  return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def val_period(val_fraction: float) -> int:
  """Every ``period``-th document (index % period == 0) goes to the validation split."""
  if not 0.0 < float(val_fraction) <= 0.5:
    raise UserError(f"data.val_fraction={val_fraction} must be in (0, 0.5]; e.g. 0.01 holds "
                     f"out every 100th document for validation.")
  return max(2, round(1.0 / float(val_fraction)))


def cache_key(data_cfg, tokenizer) -> str:
  """sha256 hex of everything that determines the token files' content."""
  payload = {
      "format_version": FORMAT_VERSION,
      "source": sources.source_key(data_cfg),
      "tokenizer": tokenizer.spec(),
      "val_fraction": float(data_cfg.val_fraction),
  }
  blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def build_token_dataset(data_cfg, tokenizer, *, seq_len: int | None = None,
                        log: Callable[[str], Any] = print) -> TokenDataset:
  """Tokenizes the configured corpus once (cached on disk) and memory-maps it.

  Args:
    data_cfg: the ``data`` config node (see ``jaxslm.data.sources``), plus
      ``val_fraction`` and ``cache_dir``.
    tokenizer: has ``vocab_size``, ``eos_id``, ``name``, ``encode_batch`` and ``spec()``.
    seq_len: if given, both splits must hold at least ``seq_len + 1`` tokens.
    log: called with progress lines.

  A second call with the same settings reuses the cache without tokenizing.
  """
  period = val_period(data_cfg.val_fraction)
  dtype = token_dtype(int(tokenizer.vocab_size))
  if not 0 <= int(tokenizer.eos_id) < int(tokenizer.vocab_size):
    raise UserError(f"tokenizer {tokenizer.name!r} has eos_id={tokenizer.eos_id} outside "
                     f"[0, vocab_size={tokenizer.vocab_size}).")
  key = cache_key(data_cfg, tokenizer)
  root = cache_root(data_cfg)
  path = os.path.join(root, f"tokens-{key[:32]}")
  if os.path.exists(os.path.join(path, "meta.json")):
    dataset = open_token_dataset(path)
    log(f"reusing token cache {path} ({dataset.meta['train_tokens']:,} train / "
        f"{dataset.meta['val_tokens']:,} val tokens)")
  else:
    os.makedirs(root, exist_ok=True)
    _build(data_cfg, tokenizer, path, key, period, dtype, log)
    dataset = open_token_dataset(path)
  if seq_len is not None:
    _check_length(dataset, int(seq_len), data_cfg)
  return dataset


def open_token_dataset(path: str) -> TokenDataset:
  """Memory-maps a cache directory written by :func:`build_token_dataset`."""
  meta_path = os.path.join(path, "meta.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path!r} is not a token cache (no meta.json); build one with "
                            f"jaxslm.data.build_token_dataset.")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format_version") != FORMAT_VERSION:
    raise UserError(f"token cache {path!r} has format_version {meta.get('format_version')}, "
                     f"this jaxslm reads {FORMAT_VERSION}; delete the directory to rebuild it.")
  dtype = np.dtype(meta["dtype"]).newbyteorder("<")
  arrays = {}
  for split in ("train", "val"):
    arrays[split] = np.memmap(os.path.join(path, f"{split}.bin"), dtype=dtype, mode="r",
                              shape=(meta[f"{split}_tokens"],))
  return TokenDataset(train=arrays["train"], val=arrays["val"], meta=meta, path=path)


def _build(data_cfg, tokenizer, path, key, period, dtype, log) -> None:
  """Streams documents -> token files in a temp dir, then moves it to ``path``."""
  description = sources.describe_source(data_cfg)
  log(f"tokenizing {description} with {tokenizer.name!r} into {path}")
  tmp = tempfile.mkdtemp(prefix=f".tmp-tokens-{key[:32]}-", dir=os.path.dirname(path))
  try:
    counts = {"train_tokens": 0, "val_tokens": 0, "train_documents": 0, "val_documents": 0}
    start = time.time()
    with open(os.path.join(tmp, "train.bin"), "wb") as train_f, \
         open(os.path.join(tmp, "val.bin"), "wb") as val_f:
      files = {"train": train_f, "val": val_f}
      chunk: list[str] = []
      n_docs = 0
      for text in sources.iter_texts(data_cfg):
        chunk.append(text)
        if len(chunk) == ENCODE_CHUNK_DOCS:
          _write_chunk(chunk, n_docs, tokenizer, period, dtype, files, counts)
          n_docs += len(chunk)
          chunk = []
          if n_docs % _LOG_EVERY_DOCS == 0:
            tokens = counts["train_tokens"] + counts["val_tokens"]
            log(f"  {n_docs:,} documents, {tokens:,} tokens ({time.time() - start:.0f}s)")
      if chunk:
        _write_chunk(chunk, n_docs, tokenizer, period, dtype, files, counts)
        n_docs += len(chunk)
    if n_docs == 0:
      raise UserError(f"the corpus {description} yielded no documents; check data.path / "
                       f"data.hf_name / data.text_field (empty documents are skipped).")
    if counts["train_documents"] == 0:
      raise UserError(
          f"the corpus {description} has only {n_docs} document(s), all of which went to the "
          f"validation split (val_fraction={data_cfg.val_fraction} holds out every "
          f"{period}th document, starting with the first); add more documents.")
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "dtype": dtype.name,
        **counts,
        "source": description,
        "source_key": sources.source_key(data_cfg),
        "tokenizer": tokenizer.name,
        "tokenizer_spec": tokenizer.spec(),
        "vocab_size": int(tokenizer.vocab_size),
        "eos_id": int(tokenizer.eos_id),
        "val_fraction": float(data_cfg.val_fraction),
        "val_rule": f"document index % {period} == 0",
        "seconds": round(time.time() - start, 3),
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    try:
      os.replace(tmp, path)
    except OSError:
      if not os.path.exists(os.path.join(path, "meta.json")):
        raise
      shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same cache first
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log(f"wrote {counts['train_tokens']:,} train tokens ({counts['train_documents']:,} documents) "
      f"and {counts['val_tokens']:,} val tokens ({counts['val_documents']:,} documents) "
      f"in {meta['seconds']:.1f}s")


def _write_chunk(texts, first_index, tokenizer, period, dtype, files, counts) -> None:
  encoded = tokenizer.encode_batch(texts)
  if len(encoded) != len(texts):
    raise UserError(f"tokenizer {tokenizer.name!r}.encode_batch returned {len(encoded)} "
                     f"sequences for {len(texts)} texts.")
  eos = np.asarray([tokenizer.eos_id], dtype=np.int64)
  parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
  for i, ids in enumerate(encoded):
    split = "val" if (first_index + i) % period == 0 else "train"
    parts[split] += [np.asarray(ids, dtype=np.int64).reshape(-1), eos]
    counts[f"{split}_documents"] += 1
  limit = np.iinfo(dtype).max
  for split, arrays in parts.items():
    if not arrays:
      continue
    ids = np.concatenate(arrays)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= int(tokenizer.vocab_size) or hi > limit:
      raise UserError(f"tokenizer {tokenizer.name!r} produced token id {lo if lo < 0 else hi} "
                       f"outside [0, vocab_size={tokenizer.vocab_size}); fix its vocab_size.")
    files[split].write(ids.astype(dtype).tobytes())
    counts[f"{split}_tokens"] += int(ids.size)


def _check_length(dataset: TokenDataset, seq_len: int, data_cfg) -> None:
  need = seq_len + 1
  for split in ("train", "val"):
    have = int(dataset.meta[f"{split}_tokens"])
    if have < need:
      raise UserError(
          f"the {split} split of {dataset.meta['source']} has {have:,} tokens "
          f"({dataset.meta[f'{split}_documents']:,} documents), fewer than seq_len + 1 = "
          f"{need:,} needed for one training window. Use more data (data.max_documents / "
          f"data.synthetic_documents / data.path), a smaller seq_len, or "
          + ("a larger data.val_fraction." if split == "val" else
             "a smaller data.val_fraction.") + f" (cache: {dataset.path})")
