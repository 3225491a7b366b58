"""Tokenizers behind one interface: tiktoken (GPT-2 and OpenAI BPEs), SentencePiece
and Hugging Face `tokenizer.json` files (byte-level BPE: GPT-2, Llama 3, Qwen, SmolLM2).

    tok = get_tokenizer("gpt2")                   # tiktoken r50k_base, 50,257 ids
    tok = get_tokenizer("runs/tok/spm.model")     # a SentencePiece model file
    tok = get_tokenizer("models/SmolLM2-135M")    # a directory with tokenizer.json
    tok = train_sentencepiece(lines, vocab_size=1024)   # in memory, no temp files
    ids = tok.encode("Natalia sold 48 clips.\n#### 72", add_eos=True)
    tok = from_spec(json.loads(json.dumps(tok.spec())))  # what checkpoints store

`encode` never turns user text into special tokens (tiktoken's `encode_ordinary`;
SentencePiece control pieces cannot be produced from text; a tokenizer.json
encodes special-token text as plain text). Special ids are
added only through `add_bos` / `add_eos`. A tokenizer pickles through its spec.
"""
from __future__ import annotations

import abc
import base64
import io
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from jaxslm.errors import ResourceUnavailable, UserError

_SPEC_VERSION = 1
_TIKTOKEN_ALIASES = {"gpt2": "r50k_base"}
_SP_MODEL_TYPES = ("bpe", "unigram")
_SP_MIN_VOCAB = 4 + 1 + 256  # pad, unk, bos, eos; "\n"; byte-fallback pieces
# Trained models: fixed special ids, "\n" its own piece, bytes for anything unseen, digits
# split; identity normalizer, spaces kept as written, no dummy prefix: decode(encode(s)) == s.
_SP_TRAIN_OPTIONS = dict(
    pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=["\n"], byte_fallback=True,
    split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
    add_dummy_prefix=False, allow_whitespace_only_pieces=True, max_sentence_length=1 << 16,
    num_threads=1, minloglevel=2,
)


class Tokenizer(abc.ABC):
    """Common interface. Ids lie in [0, vocab_size); `pad_id` is always an int."""

    name: str
    vocab_size: int
    eos_id: int
    bos_id: int | None
    pad_id: int
    special_tokens: dict[str, int]

    @abc.abstractmethod
    def _encode(self, text: str) -> list[int]: ...
    @abc.abstractmethod
    def _encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    @abc.abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-serializable description; `from_spec(spec)` rebuilds this tokenizer."""

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(
                f"{self.name}.encode expects a str, got {type(text).__name__}; "
                "use encode_batch for a list of strings."
            )
        return self._add_specials(self._encode(text), add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False,
                     add_eos: bool = False) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError(
                f"{self.name}.encode_batch expects a list of strings, got a single str; "
                "use encode for one string."
            )
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"encode_batch: item {i} is a {type(t).__name__}, expected str.")
        return [self._add_specials(ids, add_bos, add_eos) for ids in self._encode_batch(texts)]

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

    def _add_specials(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise UserError(
                    f"tokenizer {self.name!r} has no BOS token (bos_id is None); pass "
                    "add_bos=False (GPT-2 style models separate documents with add_eos=True)."
                )
            ids = [self.bos_id, *ids]
        if add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
            f"eos_id={self.eos_id}, bos_id={self.bos_id}, pad_id={self.pad_id})"
        )

    def __reduce__(self):
        return (from_spec, (self.spec(),))


# ------------------------------------------------------------------ tiktoken


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

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=self._num_threads)

    def _decode(self, ids: list[int]) -> str:
        try:
            return self._enc.decode(ids)
        except KeyError as e:  # a hole in the id space (e.g. cl100k_base 100256)
            raise UserError(f"token id {e.args[0]} is not defined in {self.name!r}.") from e

    def spec(self) -> dict[str, Any]:
        return {"kind": "tiktoken", "version": _SPEC_VERSION, "name": self.name,
                "vocab_size": self.vocab_size}


# ------------------------------------------------------------- SentencePiece


def _sp_model_type(model_proto: bytes) -> str | None:
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        m.ParseFromString(model_proto)
        return pb.TrainerSpec.ModelType.Name(m.trainer_spec.model_type).lower()
    except Exception:  # protobuf missing or unusual proto: the name is cosmetic
        return None


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model, held as its serialized proto so `spec()` is self-contained."""

    def __init__(self, model_proto: bytes, *, name: str | None = None):
        import sentencepiece as spm

        if not isinstance(model_proto, (bytes, bytearray)):
            raise TypeError(f"SentencePieceTokenizer expects model proto bytes, got "
                            f"{type(model_proto).__name__}; for a file use .from_file(path).")
        self._model_proto = bytes(model_proto)
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(self._model_proto)
        except Exception as e:
            raise UserError(f"Bytes given are not a valid SentencePiece model proto: {e}") from e
        self._sp = sp
        self.vocab_size = sp.get_piece_size()
        if sp.eos_id() < 0:
            raise UserError(
                "This SentencePiece model has no EOS piece (eos_id=-1); retrain it with an "
                "EOS id, e.g. with jaxslm.tokenizers.train_sentencepiece."
            )
        self.eos_id = sp.eos_id()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id
        self.special_tokens = {sp.id_to_piece(i): i for i in range(self.vocab_size)
                               if sp.is_control(i) or sp.is_unknown(i)}
        kind = _sp_model_type(self._model_proto)
        self.name = name or "-".join(["sentencepiece", *[kind] * bool(kind), str(self.vocab_size)])

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, name: str | None = None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"SentencePiece model file not found: {path!r}. Give the path of an existing "
                "'.model' file, or train one with jaxslm.tokenizers.train_sentencepiece."
            )
        with open(path, "rb") as f:
            return cls(f.read(), name=name)

    @property
    def model_proto(self) -> bytes:
        return self._model_proto

    def save(self, path: str | os.PathLike) -> None:
        """Writes a standard SentencePiece '.model' file."""
        with open(path, "wb") as f:
            f.write(self._model_proto)

    def _encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, out_type=int, num_threads=min(8, os.cpu_count() or 1))

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "sentencepiece",
            "version": _SPEC_VERSION,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "model_proto_b64": base64.b64encode(self._model_proto).decode("ascii"),
        }


def _training_lines(texts: Iterable[str], max_sentences: int | None) -> list[str]:
    def lines():
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"train_sentencepiece: text {i} is {type(text).__name__}, not str.")
            yield from (line for line in text.split("\n") if line)

    return list(itertools.islice(lines(), max_sentences))


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, model_type: str = "bpe",
                        seed: int = 0, max_sentences: int | None = None,
                        character_coverage: float = 1.0) -> SentencePieceTokenizer:
    """Trains a SentencePiece model in memory; same texts and seed give the same model.

    Texts are split into lines ("\\n" is its own piece and never part of another);
    `max_sentences` keeps the first that many non-empty lines, so a streaming
    iterable is fine. Layout: pad=0, unk=1, bos=2 (<s>), eos=3 (</s>), "\\n"=4,
    then 256 byte-fallback pieces, then learned pieces. The normalizer is the
    identity and spaces are kept as written, so decode(encode(s)) == s.
    """
    import sentencepiece as spm

    if model_type not in _SP_MODEL_TYPES:
        raise UserError(f"model_type must be one of {_SP_MODEL_TYPES}, got {model_type!r}.")
    if isinstance(texts, str):
        raise TypeError("train_sentencepiece expects an iterable of strings, got one str; "
                        "wrap it in a list.")
    if not isinstance(vocab_size, int) or vocab_size <= _SP_MIN_VOCAB:
        raise UserError(
            f"vocab_size must be an int above {_SP_MIN_VOCAB} (4 special ids, '\\n' and 256 "
            f"byte-fallback pieces, plus one per distinct character), got {vocab_size!r}."
        )
    if max_sentences is not None and max_sentences <= 0:
        raise UserError(f"max_sentences must be positive or None, got {max_sentences!r}.")
    lines = _training_lines(texts, max_sentences)
    if not lines:
        raise UserError("train_sentencepiece got no non-empty text to train on.")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, **_SP_TRAIN_OPTIONS)
    except RuntimeError as e:
        raise UserError(
            f"SentencePiece training failed (vocab_size={vocab_size}, model_type={model_type!r}, "
            f"{len(lines)} lines): {str(e).rstrip('.')}. Change vocab_size as the message says, "
            "or train on more text."
        ) from e
    return SentencePieceTokenizer(model.getvalue(), name=f"sentencepiece-{model_type}-{vocab_size}")


# ------------------------------------------------------- Hugging Face tokenizer.json


def _token_text(value) -> str | None:
    """A tokenizer_config.json special token: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json`, held as its JSON text so `spec()` is
    self-contained. `chat_template` (Jinja) is kept as given, for chat formatting."""

    def __init__(self, tokenizer_json: str, *, eos_id: int | None = None,
                 bos_id: int | None = None, pad_id: int | None = None,
                 chat_template: str | None = None, name: str | None = None):
        import tokenizers as hf_tokenizers

        try:
            tok = hf_tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:
            raise UserError(f"Not a valid tokenizer.json: {e}") from e
        tok.encode_special_tokens = True  # special-token text in user input stays text
        self._json, self._tok = tokenizer_json, tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.special_tokens = {t.content: i for i, t in tok.get_added_tokens_decoder().items()
                               if t.special}
        if eos_id is None:
            raise UserError(
                "This tokenizer.json has no EOS id: give eos_id=..., or an eos_token in "
                "tokenizer_config.json / eos_token_id in config.json beside it.")
        for field, v in (("eos_id", eos_id), ("bos_id", bos_id), ("pad_id", pad_id)):
            if v is not None and not 0 <= v < self.vocab_size:
                raise UserError(f"{field}={v} is outside the tokenizer's [0, {self.vocab_size}).")
        self.eos_id, self.bos_id = int(eos_id), None if bos_id is None else int(bos_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self.chat_template = chat_template
        self.name = name or f"hf-{type(tok.model).__name__.lower()}-{self.vocab_size}"

    @classmethod
    def from_dir(cls, directory: str | os.PathLike, *, name: str | None = None) -> "HFTokenizer":
        """tokenizer.json, with special ids and the chat template from
        tokenizer_config.json (or chat_template.jinja) and config.json."""
        import json

        directory = os.fspath(directory)
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No tokenizer.json in {directory!r}; give the directory "
                                    "of a Hugging Face tokenizer (tokenizer.json).")

        def read(file):
            p = os.path.join(directory, file)
            if not os.path.isfile(p):
                return None
            with open(p, encoding="utf-8") as f:
                return f.read() if file.endswith(".jinja") else json.load(f)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        tcfg, mcfg = read("tokenizer_config.json") or {}, read("config.json") or {}
        template = tcfg.get("chat_template") or read("chat_template.jinja")
        import tokenizers as hf_tokenizers
        vocab = hf_tokenizers.Tokenizer.from_str(text).get_vocab(with_added_tokens=True)

        def special(kind):
            token = _token_text(tcfg.get(f"{kind}_token"))
            if token is not None and token in vocab:
                return vocab[token]
            v = mcfg.get(f"{kind}_token_id")
            return v[0] if isinstance(v, list) and v else v
        return cls(text, eos_id=special("eos"), bos_id=special("bos"), pad_id=special("pad"),
                   chat_template=template if isinstance(template, str) else None,
                   name=name or os.path.basename(os.path.abspath(directory)) or None)

    def token_text(self, i: int | None) -> str | None:
        return None if i is None else self._tok.id_to_token(i)

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Writes tokenizer.json and a tokenizer_config.json that transformers'
        AutoTokenizer reads (special tokens, chat template)."""
        import json

        directory = os.fspath(directory)
        with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(self._json)
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast",
               "clean_up_tokenization_spaces": False,
               "eos_token": self.token_text(self.eos_id), "bos_token": self.token_text(self.bos_id),
               "pad_token": self.token_text(self.pad_id)}
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
        return ["tokenizer.json", "tokenizer_config.json"]

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "version": _SPEC_VERSION, "name": self.name,
                "vocab_size": self.vocab_size, "tokenizer_json": self._json,
                "eos_id": self.eos_id, "bos_id": self.bos_id, "pad_id": self.pad_id,
                "chat_template": self.chat_template}


# ------------------------------------------------------------------- factory


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


def from_spec(spec: Mapping[str, Any]) -> Tokenizer:
    """Rebuilds a tokenizer from `Tokenizer.spec()` (e.g. as stored in a checkpoint)."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"from_spec expects a Tokenizer.spec() dict, got {type(spec).__name__}.")
    kind = spec.get("kind")
    try:
        if kind == "tiktoken":
            tok: Tokenizer = TiktokenTokenizer(spec["name"])
        elif kind == "sentencepiece":
            proto = base64.b64decode(spec["model_proto_b64"])
            tok = SentencePieceTokenizer(proto, name=spec.get("name"))
        elif kind == "hf":
            tok = HFTokenizer(spec["tokenizer_json"], eos_id=spec["eos_id"],
                              bos_id=spec.get("bos_id"), pad_id=spec.get("pad_id"),
                              chat_template=spec.get("chat_template"), name=spec.get("name"))
        else:
            raise UserError(f"Unknown tokenizer spec kind {kind!r}; expected 'tiktoken', "
                             "'sentencepiece' or 'hf'.")
    except KeyError as e:
        raise UserError(f"Tokenizer spec of kind {kind!r} lacks the key {e.args[0]!r}.") from e
    expected = spec.get("vocab_size")
    if expected is not None and expected != tok.vocab_size:
        raise UserError(
            f"Tokenizer spec says vocab_size={expected} but {tok.name!r} has {tok.vocab_size}; "
            "the spec was written by an incompatible tokenizer version."
        )
    return tok
