"""A SentencePiece model as a Hugging Face `tokenizer.json`, for exports.

    hf_tok = to_hf_tokenizer(sp_tok)      # an HFTokenizer that encodes as sp_tok does
    hf_tok.save("exports/model")          # transformers.AutoTokenizer loads it

The `tokenizers` library (a runtime dependency) builds the tokenizer from the
model proto: the same pieces and ids; for a BPE model the merges that
SentencePiece's encoder applies (every split of a piece into two pieces, ranked
by the merged piece's score: SentencePiece merges the adjacent pair whose
concatenation scores highest); for a unigram model the pieces' log-probabilities;
byte fallback, the normalizer's precompiled character map, the dummy prefix
("▁" before the text), whitespace as "▁", and user-defined pieces (jaxslm's
trained models make "\\n" one) matched before everything else. Control pieces
(<s>, </s>, <pad>) and <unk> become special tokens.

Model types "word" and "char", the options `treat_whitespace_as_suffix` and
`escape_whitespaces=False`, and user-defined pieces together with the dummy
prefix are not translated: a UserError says so. After
building, `to_hf_tokenizer` encodes probe texts (digits, spaces, newlines,
unicode) with both and raises a UserError on any difference, so an export never
carries a tokenizer that encodes differently from the model's.
"""

from __future__ import annotations

import json

from jaxslm.errors import UserError

SPACE = "\u2581"   # SentencePiece's visible space, "▁"
PROBES = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?\n"
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
    "  two  leading spaces,   three between, a tab\there and trailing  ",
    "\n\nblank lines\n \n end\n",
    "1234567890 3.14159 -5 +7 1,000,000 $12.50 50% 2^10 x=y*3",
    "ünïcödé café naïve — “quotes” 数学 問題 😀 🧮 Ωμέγα",
    "MiXeD CaSe, punctuation!?;: (brackets) [more] {curly} <angle> 'single' \"double\"",
)
_ANYWAY = ("to export the weights anyway, call jaxslm.convert.export(cfg, params, tok, out_dir) "
           "with tok a jaxslm.tokenizers.HFTokenizer that encodes as this model does.")
# ModelProto.SentencePiece.Type and TrainerSpec.ModelType values.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2


def _proto(model_proto: bytes):
  try:
    from sentencepiece import sentencepiece_model_pb2 as pb
  except ImportError as e:   # protobuf: a dependency of orbax-checkpoint, normally present
    raise UserError(f"reading a SentencePiece model proto needs protobuf ({e}); "
                    "pip install protobuf.") from e
  m = pb.ModelProto()
  m.ParseFromString(model_proto)
  return m


def tokenizer_json(model_proto: bytes) -> str:
  """The tokenizer.json text of a SentencePiece model proto (see the module doc)."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
  m = _proto(model_proto)
  ts, ns = m.trainer_spec, m.normalizer_spec
  if ts.model_type not in (_UNIGRAM, _BPE):
    raise UserError(f"SentencePiece model type {ts.model_type} (word or char) cannot be "
                    "exported as a tokenizer.json; only BPE and unigram models can; " + _ANYWAY)
  if ts.treat_whitespace_as_suffix or not ns.escape_whitespaces:
    raise UserError("this SentencePiece model uses treat_whitespace_as_suffix or "
                    "escape_whitespaces=False, which a tokenizer.json export does not "
                    "reproduce; " + _ANYWAY)
  pieces = [(p.piece, p.score, p.type) for p in m.pieces]
  unk = next((i for i, (_, _, t) in enumerate(pieces) if t == _UNKNOWN), None)
  if ts.model_type == _BPE:
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    model = models.BPE(vocab=vocab, merges=_merges(pieces),
                       unk_token=None if unk is None else pieces[unk][0], fuse_unk=True,
                       byte_fallback=ts.byte_fallback)
  else:
    model = models.Unigram([(piece, score) for piece, score, _ in pieces], unk_id=unk,
                           byte_fallback=ts.byte_fallback)
  tok = Tokenizer(model)
  # SentencePiece's normalizer: character map, extra spaces removed, the dummy prefix, then
  # spaces as "▁". (No pre-tokenizer: SentencePiece segments the whole text at once.)
  steps = []
  if ns.precompiled_charsmap:
    steps.append(normalizers.Precompiled(ns.precompiled_charsmap))
  if ns.remove_extra_whitespaces:
    steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex("^ | $"), "")]
  if ns.add_dummy_prefix:
    steps.append(normalizers.Prepend(SPACE))
  steps.append(normalizers.Replace(" ", SPACE))
  tok.normalizer = normalizers.Sequence(steps)
  tok.decoder = decoders.Sequence(
      [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
      + ([decoders.Strip(" ", 1, 0)] if ns.add_dummy_prefix else []))
  # User-defined pieces match the raw text before anything else. (With a dummy prefix,
  # each stretch between them gets one: SentencePiece prefixes only the start of the
  # text, so such models fail the probe check below.)
  tok.add_tokens([AddedToken(piece, special=False, normalized=False)
                  for piece, _, t in pieces if t == _USER_DEFINED])
  tok.add_special_tokens([AddedToken(piece, special=True, normalized=False)
                          for piece, _, t in pieces if t in (_CONTROL, _UNKNOWN)])
  text = tok.to_str()
  n = Tokenizer.from_str(text).get_vocab_size(with_added_tokens=True)
  if n != len(pieces):
    raise UserError(f"the tokenizer.json built from this SentencePiece model has {n} ids, "
                    f"the model {len(pieces)} (duplicate pieces?); it cannot be exported.")
  return text


def _merges(pieces) -> list[tuple[str, str]]:
  """BPE merges: each split of a normal piece into two mergeable pieces, ranked by the
  merged piece's score (highest first), then by ids (lowest first)."""
  ids = {piece: i for i, (piece, _, t) in enumerate(pieces) if t == _NORMAL}
  ranked = []
  for piece, i in ids.items():
    score = pieces[i][1]
    for k in range(1, len(piece)):
      left, right = piece[:k], piece[k:]
      if left in ids and right in ids:
        ranked.append((-score, i, ids[left], ids[right], left, right))
  ranked.sort()
  return [(left, right) for *_, left, right in ranked]


def to_hf_tokenizer(sp_tok, probes=PROBES):
  """An `HFTokenizer` equivalent to the SentencePiece tokenizer `sp_tok` (same ids,
  special ids, name and add_bos_default); raises UserError if any probe text encodes
  differently."""
  from jaxslm.tokenizers.hf import HFTokenizer
  hf = HFTokenizer(tokenizer_json(sp_tok.model_proto), eos_id=sp_tok.eos_id,
                   bos_id=sp_tok.bos_id, pad_id=sp_tok.pad_id, name=sp_tok.name,
                   add_bos_default=sp_tok.add_bos_default)
  for text in probes:
    want, got = sp_tok.encode(text), hf.encode(text)
    if want != got:
      k = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
      raise UserError(
          f"the tokenizer.json built from SentencePiece model {sp_tok.name!r} encodes "
          f"{json.dumps(text[:60])}... differently from it (token {k}: "
          f"{want[k:k + 3]} vs {got[k:k + 3]}); refusing to export a tokenizer that "
          "disagrees with the model's; " + _ANYWAY)
  return hf
