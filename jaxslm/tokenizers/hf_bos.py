"""Whether a Hugging Face tokenizer prepends BOS to plain text, decided from its
files as transformers decides it, and a tokenizer.json made to agree with a choice.

    adds = adds_bos(tokenizer_json, tokenizer_config, bos_id)   # hf2jax
    text = with_bos(tokenizer_json, "<bos>", 2, True)            # jax2hf

What `AutoTokenizer.from_pretrained(dir)(text)` does (transformers 5,
`TokenizersBackend`; checked against the installed version by
tests/test_convert_bos.py):

- With a tokenizer.json, `add_bos_token` / `add_eos_token` in
  tokenizer_config.json are dropped (`PreTrainedTokenizerBase._from_pretrained`)
  and the tokenizer.json post-processor decides: Llama 3 and Gemma carry a
  `TemplateProcessing` that writes BOS before the text; GPT-2 and Qwen carry
  none, or only `ByteLevel`. No post-processor means no special tokens. Two
  classes named by `tokenizer_class` replace the post-processor whatever the
  file says: `GPTNeoXTokenizer` (no BOS) and `CodeLlamaTokenizer` (BOS). The
  class is tokenizer_config.json's `tokenizer_class`, else config.json's, else
  the one registered for the model type (GPTNeoXTokenizer for gpt_neox).
- Without one (a SentencePiece tokenizer.model only), `add_bos_token` in
  tokenizer_config.json decides; it defaults to False (True for CodeLlama).
- Either way, no BOS token means no BOS.

(transformers 4 honoured `add_bos_token` beside a tokenizer.json for the
Llama / Gemma classes; the Hub's files agree with both versions except where
the flag contradicts the post-processor, as in some Phi-3 repositories.)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping

# Tokenizer classes whose __init__ sets the post-processor itself.
_CLASS_ADDS_BOS = {"GPTNeoXTokenizer": False, "CodeLlamaTokenizer": True}
# AutoTokenizer's class for a model type whose files name none (jaxslm's families).
_MODEL_TYPE_CLASS = {"gpt_neox": "GPTNeoXTokenizer"}
_PROBE = "a b"


def _class(tokenizer_config: Mapping, model_config: Mapping) -> str:
  name = (tokenizer_config.get("tokenizer_class") or model_config.get("tokenizer_class")
          or _MODEL_TYPE_CLASS.get(model_config.get("model_type")) or "")
  return str(name).removesuffix("Fast")


def template_ends(tokenizer_json: str) -> tuple[list[int], list[int]]:
  """(ids the post-processor writes before one text, ids it writes after)."""
  import tokenizers as hf_tokenizers  # the Hugging Face library, not this package

  tok = hf_tokenizers.Tokenizer.from_str(tokenizer_json)
  tok.no_padding()
  tok.no_truncation()
  plain = tok.encode(_PROBE, add_special_tokens=False).ids
  full = tok.encode(_PROBE, add_special_tokens=True).ids
  for start in range(len(full) - len(plain) + 1):
    if full[start:start + len(plain)] == plain:
      return full[:start], full[start + len(plain):]
  return [], []   # the post-processor rewrites the text's own ids: no ends to speak of


def post_processor_adds_bos(tokenizer_json: str, bos_id: int | None) -> bool:
  """True when the tokenizer.json post-processor writes exactly BOS before a text."""
  return bos_id is not None and template_ends(tokenizer_json)[0] == [bos_id]


def adds_bos(tokenizer_json: str | None, tokenizer_config: Mapping | None,
             bos_id: int | None, *, model_config: Mapping | None = None,
             where: str = "the tokenizer") -> bool:
  """Whether transformers' tokenizer of these files prepends BOS to plain text.
  `tokenizer_json` is the text of tokenizer.json, or None for a SentencePiece
  tokenizer.model alone; `tokenizer_config` is tokenizer_config.json and
  `model_config` config.json (either may be None)."""
  tcfg = tokenizer_config or {}
  if bos_id is None:
    return False
  cls = _class(tcfg, model_config or {})
  if tokenizer_json is None:
    return bool(tcfg.get("add_bos_token", _CLASS_ADDS_BOS.get(cls, False)))
  if cls in _CLASS_ADDS_BOS:
    return _CLASS_ADDS_BOS[cls]
  before, after = template_ends(tokenizer_json)
  if before == [bos_id]:
    before = []
    adds = True
  else:
    adds = False
  if before or after:
    warnings.warn(
        f"{where}: the tokenizer.json post-processor writes ids {before} before and {after} "
        f"after each text, besides BOS; jaxslm adds only BOS (add_bos_default={adds}) and "
        "EOS where asked (add_eos=True), so prompts differ from transformers' tokenizer(text) "
        "there. Pass add_bos / add_eos explicitly if the model needs them.", stacklevel=3)
  return adds


def _bos_item(bos_text: str, type_id: int) -> dict:
  return {"SpecialToken": {"id": bos_text, "type_id": type_id}}


def _template(bos_text: str, bos_id: int) -> dict:
  """transformers' `update_post_processor` for add_bos_token=True, add_eos_token=False."""
  seq = lambda name, type_id: {"Sequence": {"id": name, "type_id": type_id}}
  return {"type": "TemplateProcessing",
          "single": [_bos_item(bos_text, 0), seq("A", 0)],
          "pair": [_bos_item(bos_text, 0), seq("A", 0), _bos_item(bos_text, 1), seq("B", 1)],
          "special_tokens": {bos_text: {"id": bos_text, "ids": [bos_id], "tokens": [bos_text]}}}


def _retemplate(proc: dict, bos_text: str, bos_id: int, add: bool) -> dict:
  """A TemplateProcessing with BOS before each sequence (add) or with no BOS."""
  def items(seq):
    out = []
    for item in seq:
      if (item.get("SpecialToken") or {}).get("id") == bos_text:
        continue
      if add and "Sequence" in item:
        out.append(_bos_item(bos_text, item["Sequence"].get("type_id", 0)))
      out.append(item)
    return out
  proc = {**proc, "single": items(proc.get("single") or []), "pair": items(proc.get("pair") or [])}
  if add:
    proc["special_tokens"] = {**(proc.get("special_tokens") or {}),
                              bos_text: {"id": bos_text, "ids": [bos_id], "tokens": [bos_text]}}
  return proc


def _rewrite(proc: dict | None, bos_text: str, bos_id: int, add: bool) -> dict | None:
  kind = (proc or {}).get("type")
  if kind == "TemplateProcessing":
    return _retemplate(proc, bos_text, bos_id, add)
  if kind == "Sequence":
    procs = list(proc.get("processors") or [])
    has = any(p.get("type") == "TemplateProcessing" for p in procs)
    procs = [_rewrite(p, bos_text, bos_id, add) if p.get("type") in ("TemplateProcessing",
             "RobertaProcessing", "BertProcessing") else p for p in procs]
    procs = [p for p in procs if p is not None]
    if add and not has:
      procs.append(_template(bos_text, bos_id))
    return {**proc, "processors": procs}
  if kind in ("RobertaProcessing", "BertProcessing"):   # CLS ... SEP: not a decoder's
    return _template(bos_text, bos_id) if add else None
  if not add:
    return proc
  return _template(bos_text, bos_id) if proc is None else {
      "type": "Sequence", "processors": [proc, _template(bos_text, bos_id)]}


def with_bos(tokenizer_json: str, bos_text: str | None, bos_id: int | None, add: bool) -> str:
  """`tokenizer_json`, its post-processor changed (only if needed) so that
  transformers prepends BOS to plain text exactly when `add` is True."""
  if post_processor_adds_bos(tokenizer_json, bos_id) == add or (bos_id is None and not add):
    return tokenizer_json
  tj = json.loads(tokenizer_json)
  tj["post_processor"] = _rewrite(tj.get("post_processor"), bos_text, bos_id, add)
  text = json.dumps(tj, ensure_ascii=False)
  if post_processor_adds_bos(text, bos_id) != add:
    warnings.warn(f"could not make the tokenizer.json post-processor {'add' if add else 'omit'} "
                  f"BOS {bos_text!r}; transformers' tokenizer(text) will differ from jaxslm's "
                  "add_bos_default there.", stacklevel=3)
  return text
