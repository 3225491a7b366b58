"""The tokenizer a GGUF file describes, built with the `tokenizers` library as
a self-contained tokenizer.json (`jaxslm.tokenizers.HFTokenizer`).

    tok = tokenizer_from_gguf(header.metadata, path)    # encode == transformers' from the file

GGUF has no tokenizer.json: `tokenizer.ggml.*` metadata holds the model kind,
the tokens, their types, merges or scores, and the special ids. Encodings
equal those of transformers' tokenizer of the same file
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), BOS included:

- `gpt2` (byte-level BPE: SmolLM2, Llama 3, Qwen): the tokens (in the
  byte-to-unicode alphabet; others are spelled in it from their UTF-8
  bytes) and merges; GPT-2's split before the byte-level step, or the split
  `tokenizer.ggml.pre` names (Llama 3, Qwen2); an unknown name warns.
- `llama` (SentencePiece-style BPE with byte fallback: Llama 2, Mistral,
  Gemma): merges are given or implied by the vocabulary, each pair of tokens
  that concatenates to a token, best first: by the token's score, and for
  Gemma (whose scores do not rank merges) by its position in the file. Text
  gets "▁" for spaces, one before the first word unless
  `tokenizer.ggml.add_space_prefix` is false (Gemma: never).
- control tokens (type 3) become special added tokens, user-defined ones
  (type 4) plain added tokens matched whole, as llama.cpp does.

BOS before plain text: `tokenizer.ggml.add_bos_token`, which defaults to
true for `llama` vocabularies and false for `gpt2` ones. EOS:
`eos_token_id`; `eot_token_id` / `eom_token_id` also end a generation. The
chat template is `tokenizer.chat_template`.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from jaxslm.errors import UserError
from jaxslm.tokenizers import HFTokenizer

CONTROL, USER_DEFINED = 3, 4
KINDS = ("gpt2", "llama")
SP = "\u2581"

# Pre-tokenizer splits by `tokenizer.ggml.pre` (the regexes of those models' tokenizer.json).
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {"llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "smaug-bpe": _LLAMA3,
          "falcon3": _LLAMA3, "dbrx": _LLAMA3, "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2,
          "megrez": _QWEN2}
# Names whose split is GPT-2's own (the byte-level pre-tokenizer's default).
GPT2_SPLIT = ("default", "gpt2", "gpt-2", "smollm")


def byte_alphabet() -> dict[int, str]:
  """GPT-2's printable spelling of each byte (printable Latin-1 stands for
  itself, the other bytes take the code points from 256 on, in order)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
  extra = (b for b in range(256) if b not in set(keep))
  out = {b: chr(b) for b in keep}
  out.update({b: chr(256 + i) for i, b in enumerate(extra)})
  return dict(sorted(out.items()))


def derive_merges(tokens: list[str], rank) -> list[list[str]]:
  """Merges implied by a vocabulary: (left, right) for every split of a token
  into two tokens, ordered by `rank[token]` (higher first), then by a longer
  left part, then a longer right part; a token's own pairs by their ids."""
  ids = {t: i for i, t in enumerate(tokens)}
  merges = []
  for token in dict.fromkeys(tokens):
    pairs = [(token[:k], token[k:]) for k in range(1, len(token))
             if token[:k] in ids and token[k:] in ids]
    pairs.sort(key=lambda p: (ids[p[0]], ids[p[1]]))
    merges += [(-rank[token], -len(a), -len(b), a, b) for a, b in pairs]
  merges.sort(key=lambda m: m[:3])   # stable: ties keep the order above
  return [[a, b] for *_, a, b in merges]


def short(value, limit: int = 80) -> str:
  """repr(value), cut to `limit` characters (metadata can hold huge arrays)."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class _Meta:
  def __init__(self, metadata: dict, path: str):
    self.md, self.path = metadata, path

  def fail(self, key: str, what: str):
    raise UserError(f"{self.path}: metadata {key} {what}. The file's tokenizer is damaged; "
                    "convert the model again with llama.cpp's convert_hf_to_gguf.py.")

  def strings(self, key: str, required: bool = True) -> list[str] | None:
    v = self.md.get(key)
    if v is None:
      if required:
        self.fail(key, "is missing")
      return None
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
      self.fail(key, "must be an array of strings")
    return v

  def numbers(self, key: str, n: int, kind: str) -> np.ndarray | None:
    v = self.md.get(key)
    if v is None:
      return None
    if not isinstance(v, np.ndarray) or v.dtype.kind not in kind or v.shape != (n,):
      self.fail(key, f"must be an array of {n} numbers, one per token (got "
                     f"{type(v).__name__} {getattr(v, 'shape', '')})")
    return v

  def token_id(self, key: str, n: int) -> int | None:
    v = self.md.get(key)
    if v is None:
      return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
      self.fail(key, f"= {short(v)} is not a token id in [0, {n})")
    return int(v)

  def flag(self, key: str, default: bool) -> bool:
    v = self.md.get(key, default)
    if not isinstance(v, bool):
      self.fail(key, f"= {short(v)} must be a BOOL")
    return v


def _added(tokens: list[str], types, vocab: dict) -> list[dict]:
  out = []
  if types is None:
    return out
  for i, (token, kind) in enumerate(zip(tokens, types)):
    if kind in (CONTROL, USER_DEFINED) and vocab.get(token) == i:
      out.append({"id": i, "content": token, "single_word": False, "lstrip": False,
                  "rstrip": False, "normalized": False, "special": bool(kind == CONTROL)})
  return out


def _byte_level(tokens: list[str], merges: list[str], pre: str,
                m: _Meta) -> tuple[dict, list[str]]:
  spell = byte_alphabet()
  alphabet = set(spell.values())
  keys = [t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))
          for t in tokens]
  pairs = []
  for i, merge in enumerate(merges):
    parts = merge.split(" ")
    if len(parts) != 2:
      m.fail("tokenizer.ggml.merges",
             f"[{i}] = {short(merge)} is not two tokens separated by a space")
    pairs.append(parts)
  if pre in SPLITS:
    pretok = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": SPLITS[pre]}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}
  else:
    if pre not in GPT2_SPLIT:
      warnings.warn(f"{m.path}: tokenizer.ggml.pre={short(pre)} is not a split jaxslm knows; using "
                    f"GPT-2's (as transformers does). Known: {sorted(SPLITS)}.", stacklevel=4)
    pretok = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
              "use_regex": True}
  vocab = {k: i for i, k in enumerate(keys)}
  model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
           "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
           "ignore_merges": False, "vocab": vocab, "merges": pairs}
  return {"model": model, "normalizer": None, "pre_tokenizer": pretok,
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                      "use_regex": True}}, keys


def _sentencepiece(tokens: list[str], m: _Meta, arch: str, n: int) -> tuple[dict, list[str]]:
  gemma = arch.startswith("gemma")
  if gemma:   # runs of spaces are stored as spaces, looked up as "▁"s
    tokens = [SP * len(t) if " " in t and not t.strip() else t for t in tokens]
  merges = m.strings("tokenizer.ggml.merges", required=False)
  if merges is not None:
    pairs = [s.split(" ") for s in merges]
    bad = next((i for i, p in enumerate(pairs) if len(p) != 2), None)
    if bad is not None:
      m.fail("tokenizer.ggml.merges", f"[{bad}] = {short(merges[bad])} is not two tokens")
  elif gemma:
    rank = {t: -i for i, t in enumerate(tokens)}
    pairs = derive_merges(tokens, rank)
  else:
    scores = m.numbers("tokenizer.ggml.scores", n, "fiu")
    if scores is None:
      m.fail("tokenizer.ggml.scores", "is missing (a SentencePiece vocabulary without merges "
                                      "needs scores)")
    if not np.all(np.isfinite(scores)):
      m.fail("tokenizer.ggml.scores", "has NaN or infinite values")
    pairs = derive_merges(tokens, dict(zip(tokens, scores.tolist())))
  vocab = {t: i for i, t in enumerate(tokens)}
  model = {"type": "BPE", "dropout": None, "continuing_subword_prefix": None,
           "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
           "ignore_merges": False, "vocab": vocab, "merges": pairs}
  decoder = [{"type": "Replace", "pattern": {"String": SP}, "content": " "},
             {"type": "ByteFallback"}, {"type": "Fuse"}]
  if gemma:
    unk = m.token_id("tokenizer.ggml.unknown_token_id", n)
    model["unk_token"] = tokens[unk] if unk is not None else None
    return {"model": model,
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SP},
            "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                              "behavior": "MergedWithPrevious", "invert": False},
            "decoder": {"type": "Sequence", "decoders": decoder}}, tokens
  model["unk_token"] = None
  prefix = m.flag("tokenizer.ggml.add_space_prefix", True)
  if prefix:
    decoder.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
  return {"model": model, "normalizer": None,
          "pre_tokenizer": {"type": "Metaspace", "replacement": SP,
                            "prepend_scheme": "first" if prefix else "never", "split": False},
          "decoder": {"type": "Sequence", "decoders": decoder}}, tokens


def tokenizer_json(metadata: dict, path: str) -> tuple[str, int]:
  """(tokenizer.json text, number of tokens) for the file's tokenizer metadata."""
  m = _Meta(metadata, path)
  kind = metadata.get("tokenizer.ggml.model")
  if not isinstance(kind, str) or kind not in KINDS:
    raise UserError(f"{path}: tokenizer.ggml.model={short(kind)} is not supported; supported: "
                    f"{', '.join(KINDS)} (byte-level BPE and SentencePiece-style BPE).")
  tokens = m.strings("tokenizer.ggml.tokens")
  n = len(tokens)
  if n == 0:
    m.fail("tokenizer.ggml.tokens", "is empty")
  types = m.numbers("tokenizer.ggml.token_type", n, "iu")
  if kind == "gpt2":
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if not isinstance(pre, str):
      m.fail("tokenizer.ggml.pre", "must be a string")
    body, keys = _byte_level(tokens, m.strings("tokenizer.ggml.merges"), pre, m)
  else:
    body, keys = _sentencepiece(tokens, m, str(metadata.get("general.architecture")), n)
  vocab = body["model"]["vocab"]
  tj = {"version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added(keys, types, vocab), "post_processor": None, **body}
  return json.dumps(tj, ensure_ascii=False), n


def tokenizer_from_gguf(metadata: dict, path: str, vocab_size: int,
                        name: str | None = None) -> HFTokenizer:
  """The `HFTokenizer` (self-contained spec) of a GGUF file's metadata;
  `vocab_size`: the model's embedding rows, which must cover every token."""
  text, n = tokenizer_json(metadata, path)
  if n > vocab_size:
    raise UserError(f"{path}: the tokenizer has {n} tokens but the model embeds only "
                    f"{vocab_size}; tokenizer.ggml.tokens and token_embd.weight disagree.")
  m = _Meta(metadata, path)
  ids = {k: m.token_id(f"tokenizer.ggml.{k}_token_id", n)
         for k in ("bos", "eos", "padding", "eot", "eom")}
  if ids["eos"] is None:
    m.fail("tokenizer.ggml.eos_token_id", "is missing; generation needs an end-of-sequence id")
  add_bos = m.flag("tokenizer.ggml.add_bos_token",
                   metadata.get("tokenizer.ggml.model") == "llama") and ids["bos"] is not None
  template = metadata.get("tokenizer.chat_template")
  if template is not None and not isinstance(template, str):
    m.fail("tokenizer.chat_template", "must be a string")
  extra = [ids[k] for k in ("eot", "eom") if ids[k] is not None and ids[k] != ids["eos"]]
  try:
    return HFTokenizer(text, eos_id=ids["eos"], bos_id=ids["bos"], pad_id=ids["padding"],
                       chat_template=template, extra_eos_ids=extra, add_bos_default=add_bos,
                       name=name)
  except UserError as e:
    raise UserError(f"{path}: {e}") from e
