"""Hugging Face `tokenizer.json` files (byte-level BPE: GPT-2, Llama 3, Qwen, SmolLM2),
with the special ids and chat template from the files beside them."""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from jaxslm import file_checks
from jaxslm.errors import UserError
from jaxslm.tokenizers import hf_bos
from jaxslm.tokenizers.base import SPEC_VERSION, Tokenizer


def _token_text(value) -> str | None:
    """A tokenizer_config.json special token: a string or {"content": ...}."""
    value = value.get("content") if isinstance(value, dict) else value
    return value if isinstance(value, str) else None


def _parse(text: str, path: str):
    """The `tokenizers.Tokenizer` of a tokenizer.json's text; UserError naming the file."""
    import tokenizers as hf_tokenizers  # the Hugging Face library, not this package

    try:
        return hf_tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # the Rust library raises plain Exception for any bad file
        detail = file_checks.brief(e)
        raise UserError(f"{path} is not a valid tokenizer.json ({detail}); download it again, "
                        "or save the tokenizer with transformers' save_pretrained.") from None


def _as_ids(value) -> list[int]:
    """config.json / generation_config.json `*_token_id`: an int, a list of ints or null."""
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json`, held as its JSON text so `spec()` is
    self-contained. `chat_template` (Jinja) is kept as given, for chat formatting;
    `extra_eos_ids` are further ids that end a generation besides `eos_id`;
    `add_bos_default` is whether prompts get BOS (`from_dir` reads it from the
    files as transformers does; see `jaxslm.tokenizers.hf_bos`)."""

    def __init__(self, tokenizer_json: str, *, eos_id: int | None = None,
                 bos_id: int | None = None, pad_id: int | None = None,
                 chat_template: str | None = None, name: str | None = None,
                 extra_eos_ids: Sequence[int] = (), add_bos_default: bool = False):
        import tokenizers as hf_tokenizers  # the Hugging Face library, not this package

        try:
            tok = hf_tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:
            raise UserError(f"Not a valid tokenizer.json: {file_checks.brief(e)}") from e
        tok.encode_special_tokens = True  # special-token text in user input stays text
        self._json, self._tok, self._tok_special = tokenizer_json, tok, None
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.special_tokens = {t.content: i for i, t in tok.get_added_tokens_decoder().items()
                               if t.special}
        if eos_id is None:
            raise UserError(
                "This tokenizer.json has no EOS id: give eos_id=..., or an eos_token in "
                "tokenizer_config.json / eos_token_id in config.json beside it.")
        if isinstance(extra_eos_ids, (str, int)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in extra_eos_ids):
            raise UserError(f"extra_eos_ids={extra_eos_ids!r}: expected a list of token ids.")
        checks = [("eos_id", eos_id), ("bos_id", bos_id), ("pad_id", pad_id)]
        checks += [("extra_eos_ids", i) for i in extra_eos_ids]
        for field, v in checks:
            if v is not None and not 0 <= v < self.vocab_size:
                raise UserError(f"{field}={v} is outside the tokenizer's [0, {self.vocab_size}).")
        self.eos_id, self.bos_id = int(eos_id), None if bos_id is None else int(bos_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self.extra_eos_ids = tuple(dict.fromkeys(int(i) for i in extra_eos_ids if i != eos_id))
        if chat_template is not None and not isinstance(chat_template, str):
            raise UserError(f"chat_template must be a Jinja template string or None, got "
                            f"{type(chat_template).__name__}.")
        self.chat_template = chat_template
        self.name = name or f"hf-{type(tok.model).__name__.lower()}-{self.vocab_size}"
        self._set_add_bos_default(add_bos_default)

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, *, name: str | None = None) -> "HFTokenizer":
        """tokenizer.json, with special ids and the chat template from
        tokenizer_config.json (or chat_template.jinja), config.json and
        generation_config.json. Every EOS id these list ends a generation.
        `add_bos_default` is what transformers' AutoTokenizer does with these
        files: BOS where `tokenizer(text)` prepends it."""
        directory = os.fspath(directory)
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.lexists(path):
            raise FileNotFoundError(f"No tokenizer.json in {directory!r}; give the directory "
                                    "of a Hugging Face tokenizer (tokenizer.json).")

        def read(file):   # a file beside tokenizer.json; every problem names it
            p = os.path.join(directory, file)
            if file.endswith(".jinja"):
                return file_checks.read_text(p, file) if os.path.lexists(p) else None
            return file_checks.read_json_object(p, file, missing_ok=True)
        text = file_checks.read_text(path, "tokenizer.json")
        tcfg, mcfg = read("tokenizer_config.json") or {}, read("config.json") or {}
        gcfg = read("generation_config.json") or {}
        template = tcfg.get("chat_template") or read("chat_template.jinja")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is not None and not isinstance(template, str):
            where = os.path.join(directory, "tokenizer_config.json")
            raise UserError(f"The chat_template in {where} is a {type(template).__name__}, not "
                            "a Jinja template string; fix or remove it.")
        vocab = _parse(text, path).get_vocab(with_added_tokens=True)

        def special(kind):
            token = _token_text(tcfg.get(f"{kind}_token"))
            if token is not None and token in vocab:
                return vocab[token]
            ids = _as_ids(mcfg.get(f"{kind}_token_id")) or _as_ids(gcfg.get(f"{kind}_token_id"))
            return ids[0] if ids else None
        eos_id, bos_id = special("eos"), special("bos")
        extra = [i for cfg in (mcfg, gcfg) for i in _as_ids(cfg.get("eos_token_id"))
                 if i != eos_id and 0 <= i < len(vocab)]
        add_bos = hf_bos.adds_bos(text, tcfg, bos_id, model_config=mcfg, where=directory)
        return cls(text, eos_id=eos_id, bos_id=bos_id, pad_id=special("pad"),
                   chat_template=template,
                   extra_eos_ids=extra, add_bos_default=add_bos,
                   name=name or os.path.basename(os.path.abspath(directory)) or None)

    def token_text(self, i: int | None) -> str | None:
        return None if i is None else self._tok.id_to_token(i)

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Writes tokenizer.json and a tokenizer_config.json that transformers'
        AutoTokenizer reads (special tokens, chat template, and BOS before plain
        text exactly when `add_bos_default`: the tokenizer.json post-processor is
        adjusted where it says otherwise)."""
        directory = os.fspath(directory)
        bos_text = self.token_text(self.bos_id)
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(hf_bos.with_bos(self._json, bos_text, self.bos_id, self.add_bos_default))
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast",
               "clean_up_tokenization_spaces": False,
               "eos_token": self.token_text(self.eos_id), "bos_token": bos_text,
               "pad_token": self.token_text(self.pad_id), "add_bos_token": self.add_bos_default}
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        return ["tokenizer.json", "tokenizer_config.json"]

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _encode_special(self, text: str) -> list[int]:
        if self._tok_special is None:  # a second instance: the flag is per instance, not per call
            import tokenizers as hf_tokenizers
            self._tok_special = hf_tokenizers.Tokenizer.from_str(self._json)
            self._tok_special.encode_special_tokens = False
        return self._tok_special.encode(text, add_special_tokens=False).ids

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    @classmethod
    def _from_spec(cls, spec) -> "HFTokenizer":
        return cls(spec["tokenizer_json"], eos_id=spec["eos_id"], bos_id=spec.get("bos_id"),
                   pad_id=spec.get("pad_id"), chat_template=spec.get("chat_template"),
                   name=spec.get("name"), extra_eos_ids=spec.get("extra_eos_ids") or (),
                   add_bos_default=bool(spec.get("add_bos_default")))

    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "version": SPEC_VERSION, "name": self.name,
                "vocab_size": self.vocab_size, "tokenizer_json": self._json,
                "eos_id": self.eos_id, "bos_id": self.bos_id, "pad_id": self.pad_id,
                "extra_eos_ids": list(self.extra_eos_ids), "chat_template": self.chat_template,
                **({"add_bos_default": True} if self.add_bos_default else {})}
