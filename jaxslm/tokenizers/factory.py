"""`get_tokenizer` (by name or path) and `from_spec` (from `Tokenizer.spec()`)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from jaxslm.errors import UserError
from jaxslm.tokenizers.base import Tokenizer
from jaxslm.tokenizers.hf import HFTokenizer
from jaxslm.tokenizers.sentencepiece_tok import SentencePieceTokenizer
from jaxslm.tokenizers.tiktoken_tok import _TIKTOKEN_ALIASES, TiktokenTokenizer, _tiktoken_names


def get_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """"gpt2" / a tiktoken encoding name, the path of a SentencePiece '.model' file,
    or a Hugging Face tokenizer (tokenizer.json, or the directory holding it)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"get_tokenizer expects a name or path, got {type(name_or_path).__name__}.")
    s = os.fspath(name_or_path)
    if s.endswith(".model"):
        return SentencePieceTokenizer.from_file(s)
    if os.path.basename(s) == "tokenizer.json" and os.path.isfile(s):
        return HFTokenizer.from_dir(os.path.dirname(s) or ".")
    if os.path.isfile(os.path.join(s, "tokenizer.json")):
        return HFTokenizer.from_dir(s)
    known = [n for n in _tiktoken_names() if n not in _TIKTOKEN_ALIASES]
    if _TIKTOKEN_ALIASES.get(s, s) in known:
        return TiktokenTokenizer(s)
    raise UserError(
        f"Unknown tokenizer {s!r}. Accepted: 'gpt2' (alias of 'r50k_base'), a tiktoken "
        f"encoding name ({', '.join(known)}), the path of a SentencePiece '.model' file, or "
        "a Hugging Face tokenizer.json (or its directory)."
    )


_KINDS = {"tiktoken": TiktokenTokenizer, "sentencepiece": SentencePieceTokenizer,
          "hf": HFTokenizer}


def from_spec(spec: Mapping[str, Any]) -> Tokenizer:
    """Rebuilds a tokenizer from `Tokenizer.spec()` (e.g. as stored in a checkpoint).
    A spec without "add_bos_default" (written before it existed) means False."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"from_spec expects a Tokenizer.spec() dict, got {type(spec).__name__}.")
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise UserError(f"Unknown tokenizer spec kind {kind!r}; expected 'tiktoken', "
                        "'sentencepiece' or 'hf'.")
    return _KINDS[kind].rebuild(spec)
