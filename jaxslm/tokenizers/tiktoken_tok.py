"""tiktoken encodings (GPT-2's r50k_base and OpenAI's other BPEs)."""
from __future__ import annotations

import os
from typing import Any

from jaxslm.errors import ResourceUnavailable, UserError
from jaxslm.tokenizers.base import SPEC_VERSION, Tokenizer

_TIKTOKEN_ALIASES = {"gpt2": "r50k_base"}


def _tiktoken_names() -> list[str]:
    import tiktoken
    return sorted(tiktoken.list_encoding_names())


def _tiktoken_load_error(name: str, err: Exception) -> ResourceUnavailable:
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    where = f"TIKTOKEN_CACHE_DIR={cache!r} lacks them" if cache else "TIKTOKEN_CACHE_DIR is unset"
    return ResourceUnavailable(
        f"Could not load the tiktoken encoding {name!r}: its BPE ranks could not be "
        f"downloaded or found in a local cache ({where}). Either allow network access "
        "so tiktoken can download them once, or set the TIKTOKEN_CACHE_DIR environment "
        "variable to a directory holding the cached ranks, e.g. "
        "`export TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache` from the repository root. "
        f"Underlying error: {type(err).__name__}: {err}"
    )


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding. GPT-2 is "r50k_base"; it has no BOS, and pad_id = eos_id."""

    def __init__(self, encoding_name: str = "r50k_base", *, num_threads: int = 8):
        import tiktoken

        name = _TIKTOKEN_ALIASES.get(encoding_name, encoding_name)
        known = _tiktoken_names()
        if name not in known:
            raise UserError(
                f"Unknown tiktoken encoding {encoding_name!r}; expected one of "
                f"{sorted(set(_TIKTOKEN_ALIASES) | set(known))}."
            )
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as e:  # requests / OS / hash errors all mean "ranks unavailable"
            raise _tiktoken_load_error(name, e) from e
        self._enc = enc
        self._num_threads = num_threads
        self.name = name
        self.vocab_size = enc.n_vocab
        self.special_tokens = {t: enc.encode_single_token(t) for t in enc.special_tokens_set}
        self.eos_id = enc.eot_token  # <|endoftext|>
        self.bos_id = None
        self.pad_id = self.eos_id

    def _encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def _encode_special(self, text: str) -> list[int]:
        return self._enc.encode(text, allowed_special="all", disallowed_special=())

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=self._num_threads)

    def _decode(self, ids: list[int]) -> str:
        try:
            return self._enc.decode(ids)
        except KeyError as e:  # a hole in the id space (e.g. cl100k_base 100256)
            raise UserError(f"token id {e.args[0]} is not defined in {self.name!r}.") from e

    @classmethod
    def _from_spec(cls, spec) -> "TiktokenTokenizer":
        return cls(spec["name"])

    def spec(self) -> dict[str, Any]:
        return {"kind": "tiktoken", "version": SPEC_VERSION, "name": self.name,
                "vocab_size": self.vocab_size}

