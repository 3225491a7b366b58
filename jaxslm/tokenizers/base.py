"""The `Tokenizer` interface every jaxslm tokenizer implements."""
from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxslm.errors import UserError

SPEC_VERSION = 1


class Tokenizer(abc.ABC):
    """Common interface. Ids lie in [0, vocab_size); `pad_id` is always an int.

    `eos_id` is the EOS id that `add_eos` appends; `extra_eos_ids` are further ids
    that also end a generation (e.g. Llama 3 instruct's <|eot_id|> beside
    <|end_of_text|>); `eos_ids` is all of them. `chat_template` is a Jinja chat
    template (Hugging Face style) or None.

    `add_bos_default` says whether text prompts of this tokenizer's model start
    with BOS: True where the Hugging Face tokenizer it was converted from prepends
    BOS when encoding plain text (Llama 3, Gemma, Mistral), False otherwise (GPT-2,
    Qwen, Phi-2, and jaxslm's own tokenizers, whose models are trained without
    BOS). `encode(text, add_bos=None)` follows it; `add_bos=False` stays the
    default of `encode` (training data is encoded as written).
    """

    name: str
    vocab_size: int
    eos_id: int
    bos_id: int | None
    pad_id: int
    special_tokens: dict[str, int]
    extra_eos_ids: tuple[int, ...] = ()
    chat_template: str | None = None
    add_bos_default: bool = False

    @abc.abstractmethod
    def _encode(self, text: str) -> list[int]: ...
    @abc.abstractmethod
    def _encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    @abc.abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    def _encode_special(self, text: str) -> list[int]:
        """Like `_encode`, but special-token text ("<|im_start|>") becomes its id."""
        raise UserError(
            f"tokenizer {self.name!r} ({type(self).__name__}) cannot map special-token text "
            "to special ids; pass allow_special=False, or use a Hugging Face tokenizer.json "
            "or tiktoken tokenizer."
        )

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-serializable description; `from_spec(spec)` rebuilds this tokenizer."""

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation: `eos_id` first, then `extra_eos_ids`."""
        return (self.eos_id, *(i for i in self.extra_eos_ids if i != self.eos_id))

    def encode(self, text: str, *, add_bos: bool | None = False, add_eos: bool = False,
               allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token text stays plain text unless
        `allow_special=True` (for trusted text such as a rendered chat template).
        `add_bos=None` means `add_bos_default`; BOS is never added to text that
        already starts with it (a chat template that writes BOS itself)."""
        if not isinstance(text, str):
            raise TypeError(
                f"{self.name}.encode expects a str, got {type(text).__name__}; "
                "use encode_batch for a list of strings."
            )
        ids = self._encode_special(text) if allow_special else self._encode(text)
        return self._add_specials(ids, add_bos, add_eos)

    def resolve_add_bos(self, add_bos: bool | None) -> bool:
        """`add_bos`, or `add_bos_default` for None: whether a prompt gets BOS."""
        return self.add_bos_default if add_bos is None else bool(add_bos)

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool | None = False,
                     add_eos: bool = False, allow_special: bool = False) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError(
                f"{self.name}.encode_batch expects a list of strings, got a single str; "
                "use encode for one string."
            )
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"encode_batch: item {i} is a {type(t).__name__}, expected str.")
        batch = ([self._encode_special(t) for t in texts] if allow_special
                 else self._encode_batch(texts))
        return [self._add_specials(ids, add_bos, add_eos) for ids in batch]

    def decode(self, ids: Any) -> str:
        """Decodes a 1-D sequence of ids (list, numpy or jax array). Special ids do not crash."""
        arr = np.asarray(ids)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise UserError(f"decode expects 1-D ids, got shape {arr.shape}; decode each row.")
        if arr.size == 0:
            return ""
        if not np.issubdtype(arr.dtype, np.integer):
            raise UserError(f"decode expects integer ids, got dtype {arr.dtype}.")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise UserError(
                f"token id {bad} is outside [0, {self.vocab_size}) for tokenizer {self.name!r}; "
                "were these ids produced by a different tokenizer or model vocab size?"
            )
        return self._decode(arr.tolist())

    # ---------------------------------------------------------------- chat

    def token_text(self, i: int | None) -> str | None:
        """The text of special id `i` (None for None)."""
        if i is None:
            return None
        for text, j in self.special_tokens.items():
            if j == i:
                return text
        return self._decode([i])

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *,
                    add_generation_prompt: bool = True, **variables: Any) -> str:
        """The chat template applied to `messages` ([{"role": ..., "content": ...}]),
        as transformers' `apply_chat_template(..., tokenize=False)`. `variables`
        are passed to the template (e.g. tools=[...])."""
        from jaxslm.tokenizers.chat import render_chat_template

        if self.chat_template is None:
            raise UserError(
                f"tokenizer {self.name!r} has no chat template; pass plain text prompts "
                "(chat=False), or load a Hugging Face tokenizer whose tokenizer_config.json "
                "(or chat_template.jinja) has one."
            )
        variables = {"bos_token": self.token_text(self.bos_id) or "",
                     "eos_token": self.token_text(self.eos_id) or "", **variables}
        return render_chat_template(self.chat_template, messages,
                                    add_generation_prompt=add_generation_prompt, **variables)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *,
                    add_generation_prompt: bool = True, add_bos: bool = False,
                    **variables: Any) -> list[int]:
        """`render_chat`, then `encode` with special-token text mapped to special
        ids, as transformers' `apply_chat_template(..., tokenize=True)`. Templates
        write BOS themselves where the model wants it, so `add_bos` is off (and
        `add_bos=True` does not add a second BOS after a template's own)."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt,
                                **variables)
        return self.encode(text, add_bos=add_bos, allow_special=True)

    # ------------------------------------------------------------- helpers

    def _set_add_bos_default(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise UserError(f"add_bos_default={value!r}: expected True or False.")
        if value and self.bos_id is None:
            raise UserError(
                f"add_bos_default=True but tokenizer {self.name!r} has no BOS token (bos_id is "
                "None); give its bos_id (a bos_token in tokenizer_config.json) or leave "
                "add_bos_default False.")
        self.add_bos_default = value

    def _add_specials(self, ids: list[int], add_bos: bool | None, add_eos: bool) -> list[int]:
        if self.resolve_add_bos(add_bos):
            if self.bos_id is None:
                raise UserError(
                    f"tokenizer {self.name!r} has no BOS token (bos_id is None); pass "
                    "add_bos=False (GPT-2 style models separate documents with add_eos=True)."
                )
            if ids[:1] != [self.bos_id]:  # never twice (a template may have written it)
                ids = [self.bos_id, *ids]
        if add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"eos_id={self.eos_id}, bos_id={self.bos_id}, pad_id={self.pad_id})"
        )

    @classmethod
    def _from_spec(cls, spec: Mapping[str, Any]) -> "Tokenizer":
        """This kind's tokenizer from its own `spec()` (a missing key raises KeyError)."""
        raise NotImplementedError

    @classmethod
    def rebuild(cls, spec: Mapping[str, Any]) -> "Tokenizer":
        """The tokenizer `spec()` describes, checked: a missing key or another
        vocabulary size is a `UserError`. `tokenizers.from_spec` picks the class
        by the spec's kind and calls this."""
        try:
            tok = cls._from_spec(spec)
        except KeyError as e:
            raise UserError(f"Tokenizer spec of kind {spec.get('kind')!r} lacks the key "
                            f"{e.args[0]!r}.") from e
        expected = spec.get("vocab_size")
        if expected is not None and expected != tok.vocab_size:
            raise UserError(
                f"Tokenizer spec says vocab_size={expected} but {tok.name!r} has "
                f"{tok.vocab_size}; the spec was written by an incompatible tokenizer version.")
        return tok

    def __reduce__(self):
        return (type(self).rebuild, (self.spec(),))
