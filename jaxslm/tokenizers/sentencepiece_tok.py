"""SentencePiece models: loaded from '.model' files or trained in memory."""
from __future__ import annotations

import base64
import io
import itertools
import os
from collections.abc import Iterable
from typing import Any

from jaxslm import file_checks
from jaxslm.errors import UserError
from jaxslm.tokenizers.base import SPEC_VERSION, Tokenizer

_SP_MODEL_TYPES = ("bpe", "unigram")
_SP_MAX_BYTES = 1 << 30   # real models are a few MB
_SP_MIN_VOCAB = 4 + 1 + 256  # pad, unk, bos, eos; "\n"; byte-fallback pieces
# Trained models: fixed special ids, "\n" its own piece, bytes for anything unseen, digits
# split; identity normalizer, spaces kept as written, no dummy prefix: decode(encode(s)) == s.
_SP_TRAIN_OPTIONS = dict(
    pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=["\n"], byte_fallback=True,
    split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
    add_dummy_prefix=False, allow_whitespace_only_pieces=True, max_sentence_length=1 << 16,
    num_threads=1, minloglevel=2,
)


def _sp_model_type(model_proto: bytes) -> str | None:
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        m.ParseFromString(model_proto)
        return pb.TrainerSpec.ModelType.Name(m.trainer_spec.model_type).lower()
    except Exception:  # protobuf missing or unusual proto: the name is cosmetic
        return None


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model, held as its serialized proto so `spec()` is self-contained.
    `add_bos_default`: whether prompts get BOS (False for models trained by jaxslm;
    a converted Hugging Face tokenizer.model takes `add_bos_token` from its
    tokenizer_config.json)."""

    def __init__(self, model_proto: bytes, *, name: str | None = None,
                 add_bos_default: bool = False):
        import sentencepiece as spm

        if not isinstance(model_proto, (bytes, bytearray)):
            raise TypeError(f"SentencePieceTokenizer expects model proto bytes, got "
                            f"{type(model_proto).__name__}; for a file use .from_file(path).")
        self._model_proto = bytes(model_proto)
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(self._model_proto)
        except Exception as e:
            raise UserError(f"Bytes given are not a valid SentencePiece model proto: "
                            f"{file_checks.brief(e)}") from e
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
        self._set_add_bos_default(add_bos_default)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, name: str | None = None,
                  add_bos_default: bool = False):
        path = os.fspath(path)
        if not os.path.lexists(path):
            raise FileNotFoundError(
                f"SentencePiece model file not found: {path!r}. Give the path of an existing "
                "'.model' file, or train one with jaxslm.tokenizers.train_sentencepiece."
            )
        with file_checks.open_file(path, "SentencePiece model file") as f:
            proto = f.read(_SP_MAX_BYTES + 1)
        if len(proto) > _SP_MAX_BYTES:
            raise UserError(f"{path} is over {_SP_MAX_BYTES >> 20} MB, far larger than a "
                            "SentencePiece model; it is not a tokenizer.model. Restore the file.")
        try:
            return cls(proto, name=name, add_bos_default=add_bos_default)
        except UserError as e:
            raise UserError(f"{path}: {e} Give a SentencePiece '.model' file (download it "
                            "again if it was cut short).") from None

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

    @classmethod
    def _from_spec(cls, spec) -> "SentencePieceTokenizer":
        return cls(base64.b64decode(spec["model_proto_b64"]), name=spec.get("name"),
                   add_bos_default=bool(spec.get("add_bos_default")))

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "sentencepiece",
            "version": SPEC_VERSION,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "model_proto_b64": base64.b64encode(self._model_proto).decode("ascii"),
            **({"add_bos_default": True} if self.add_bos_default else {}),
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

