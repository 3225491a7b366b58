"""Supervised fine-tuning data: (prompt, target) pairs, their tokens and loss masks, rows.

    from jaxslm.data import gsm8k, sft

    train = gsm8k.load("train", path="../shared/data/gsm8k")
    examples = sft.from_gsm8k(train, "qa")  # "socratic" (with config="socratic"), "python", ...
    # or instruction data: sft.load_instruction_data("data/code.jsonl") / a `datasets` hub name
    encoded, dropped = sft.encode(examples, tokenizer, max_len=513)  # (ids, loss_mask) pairs
    print(encoded.describe())                       # "7,471 examples encoded; 2 dropped as ..."
    tokens, weights = sft.pack(encoded, seq_len=512, pad_id=tokenizer.pad_id)
    data = sft.SFTBatches(tokens, weights, global_batch_size=32, seed=0)
    tokens_bt1, weights_bt = data.batch(step)               # exact on resume: f(seed, step)
    loss, n = sft.masked_token_loss(logits_btv, tokens_bt1[:, 1:], weights_bt)

Token boundary: prompt and target are tokenized separately and concatenated,
`ids = encode(prompt) + encode(target) [+ EOS]`. The prompt's tokens are then
exactly what evaluation feeds the model (it encodes the prompt alone) and the
boundary is always a token boundary. This is why GSM8K targets start with a
space (`"...Answer:"` + `" He buys..."`): BPE attaches a space to the word after
it, so the two encodings match one encoding of the whole text there.

Loss mask: `loss_mask[i]` is True when token `i` is to be predicted: every
target token and the EOS; never a prompt token, never token 0 (nothing
precedes it). `mask_prompt=False` trains on every token but the first.

Given spans: `SFTExample.given` lists character spans of the target that
the model does not write (an agent's tool observations); their tokens get no
loss. The target is still encoded whole, as the agent loop encodes its
transcript; a span's edges become token edges by encoding the target up to
them, and an edge that falls inside a token takes that token into the span.

Rows hold `seq_len + 1` tokens: the model reads `row[:-1]`, predicts `row[1:]`,
and `weights[t]` is the loss mask of token `t + 1`. `pack` places whole
examples greedily first-fit (each into the first row with room) and never
splits one across rows; the rest of a row is `pad_id` with weight 0. This is
simple packing: positions run over the whole row and an example attends to the
examples before it in its row (no segment mask); the first token of an example
is a prompt token of weight 0, so no loss term predicts across the boundary,
but its later tokens see the earlier examples. `return_segments=True` also
gives segment ids (1, 2, ... per example in a row, 0 on padding) for a
segment mask or per-example positions later. `pad` puts one example a row.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxslm.data.templates import Template, get_template, strip_annotations
from jaxslm.errors import ResourceUnavailable, UserError

# The layout of instruction data when no template is named ("any local or
# datasets instruction data", e.g. the second stage of stacked LoRA).
INSTRUCTION_PROMPT = "Instruction: {instruction}\nResponse:"
INSTRUCTION_PROMPT_WITH_INPUT = "Instruction: {instruction}\nInput: {input}\nResponse:"
INSTRUCTION_TARGET = " {output}"
OFFLINE_HINT = "pass a local .jsonl or .json file of rows instead"


@dataclasses.dataclass(frozen=True)
class SFTExample:
  prompt: str   # what the model is given (no loss)
  target: str   # what it learns to write after it (EOS is added by `encode`)
  # (start, end) character spans of `target` that the model is given, not asked to
  # write (a tool's observation inserted into an agent trace): no loss on them.
  given: tuple[tuple[int, int], ...] = ()


class SFTExamples(list):
  """A list of SFTExample, with where they came from and the rows skipped (index, reason)."""

  def __init__(self, *, source: str = ""):
    super().__init__()
    self.source, self.skipped = source, []

  def describe(self) -> str:
    text = f"{len(self):,} examples from {self.source or 'memory'}"
    if self.skipped:
      index, reason = self.skipped[0]
      text += f" ({len(self.skipped):,} rows skipped; first: row {index}: {reason})"
    return text


# ---------------------------------------------------------------- examples


def _template(template: str | Template) -> Template:
  return template if isinstance(template, Template) else get_template(template)


def from_gsm8k(examples: Iterable[Any], template: str | Template = "qa", *,
               keep_annotations: bool = True) -> SFTExamples:
  """One SFTExample per GSM8K `Example` (or a `gsm8k.Split`): the template's
  prompt of the question and target of the solution. `keep_annotations=False`
  removes the `<<expr=value>>` calculator markup from the target ("python"
  builds its program from the markup first, so it is unaffected)."""
  t = _template(template)
  source = getattr(examples, "source", "")
  examples = getattr(examples, "examples", examples)
  out = SFTExamples(source=f"gsm8k {source}".strip() + f", template {t.name!r}")
  for e in examples:
    target = t.target(e.answer, e.gold)
    out.append(SFTExample(t.prompt(e.question), target if keep_annotations
                          else strip_annotations(target)))
  return out


def from_records(rows: Iterable[Mapping[str, Any]], *, prompt_field: str = "instruction",
                 target_field: str = "output", input_field: str | None = "input",
                 template: str | Template | None = None, source: str = "") -> SFTExamples:
  """SFTExamples from dict rows (instruction data, or GSM8K-like question/answer rows).

  Without a template the prompt is `INSTRUCTION_PROMPT` of the prompt field, or
  `INSTRUCTION_PROMPT_WITH_INPUT` when the row's `input_field` is a non-empty
  string (a row without that field has no input), and the target is
  " {output}". With a template name ("qa", ...) the prompt field is the
  question (input appended on a new line when present) and the target field a
  worked solution; the gold answer is what follows its last "####" (a row
  without one is skipped).

  A row without the prompt or target field, or whose value there is not a
  string, raises UserError naming the field and listing the row's fields; a row
  whose target is empty or whitespace is skipped and listed in `.skipped`.
  """
  t = None if template is None else _template(template)
  out = SFTExamples(source=source)
  for index, row in enumerate(rows):
    where = f"{source or 'records'} row {index}"
    if not isinstance(row, Mapping):
      raise UserError(f"{where} is a {type(row).__name__}, expected an object with fields "
                      f"{prompt_field!r} and {target_field!r}.")
    prompt, target = (_field(row, f, where, role) for f, role in
                      ((prompt_field, "prompt"), (target_field, "target")))
    extra = row.get(input_field) if input_field else None
    if extra is not None and not isinstance(extra, str):
      raise UserError(f"{where}: field {input_field!r} holds a {type(extra).__name__}, expected "
                      f"a string; pass input_field=None to ignore it.")
    extra = extra.strip() if extra else ""
    if not target.strip():
      out.skipped.append((index, f"field {target_field!r} is empty"))
      continue
    if t is None:
      fmt = INSTRUCTION_PROMPT_WITH_INPUT if extra else INSTRUCTION_PROMPT
      out.append(SFTExample(fmt.format(instruction=prompt.strip(), input=extra),
                            INSTRUCTION_TARGET.format(output=target.rstrip())))
    else:
      question = f"{prompt.strip()}\n{extra}" if extra else prompt
      gold = target.rpartition("####")[2].strip().replace(",", "").replace("$", "")
      if "####" not in target or not gold:
        out.skipped.append((index, f"field {target_field!r} has no final answer after '####'"))
        continue
      out.append(SFTExample(t.prompt(question), t.target(target, gold)))
  return out


def _field(row: Mapping[str, Any], field: str, where: str, role: str) -> str:
  if field not in row:
    raise UserError(f"{where} has no field {field!r} (the {role}); its fields are "
                    f"{sorted(row)}. Pass {role}_field= one of them.")
  value = row[field]
  if not isinstance(value, str):
    raise UserError(f"{where}: field {field!r} (the {role}) holds a {type(value).__name__}, "
                    f"expected a string; pass {role}_field= a text field of {sorted(row)}.")
  return value


def load_instruction_data(path_or_hf_name: str, split: str = "train", *,
                          prompt_field: str = "instruction", target_field: str = "output",
                          input_field: str | None = "input", hf_config: str | None = None,
                          template: str | Template | None = None) -> SFTExamples:
  """Instruction data from a local file or the `datasets` hub, as `from_records` builds it.

  Local: a `.jsonl` / `.ndjson` file (one object a line), a `.json` file (a list
  of objects, or JSON Lines when it starts with "{"), or a directory holding
  `{split}.jsonl` or `{split}.json`. Anything else is a hub dataset name, read
  with `datasets.load_dataset(name, hf_config, split=split)`; an unreachable hub
  raises ResourceUnavailable (pass a local file). A dataset without the prompt
  or target field raises UserError listing the fields it has.
  """
  path = os.path.expanduser(str(path_or_hf_name))
  if os.path.isdir(path):
    found = [n for n in (os.path.join(path, f"{split}{e}") for e in (".jsonl", ".json"))
             if os.path.isfile(n)]
    if not found:
      raise UserError(f"directory {path!r} has no {split}.jsonl or {split}.json; pass the "
                      f"data file itself, or a split name that file provides.")
    path = found[0]
  kwargs = dict(prompt_field=prompt_field, target_field=target_field, input_field=input_field,
                template=template)
  if path.lower().endswith((".jsonl", ".ndjson", ".json")) or os.path.isfile(path):
    if not os.path.isfile(path):
      raise UserError(f"instruction data file {path!r} does not exist (cwd {os.getcwd()!r}).")
    if not path.lower().endswith((".jsonl", ".ndjson", ".json")):
      raise UserError(f"instruction data file {path!r} is not .jsonl, .ndjson or .json; "
                      f"convert it to JSON Lines (one object a line).")
    return from_records(_file_rows(path), source=path, **kwargs)
  ds = _hub_dataset(str(path_or_hf_name), hf_config, split)
  columns = list(getattr(ds, "column_names", None) or [])
  for field, role in ((prompt_field, "prompt"), (target_field, "target")):
    if columns and field not in columns:
      raise UserError(f"dataset {path_or_hf_name!r} (split {split!r}) has no field {field!r} "
                      f"(the {role}); its fields are {columns}. Pass {role}_field= one of them.")
  return from_records(ds, source=f"hf:{path_or_hf_name}/{hf_config or ''}/{split}", **kwargs)


def _file_rows(path: str) -> list[Any]:
  from jaxslm.data.gsm8k import BadRow, read_rows
  rows = []
  for index, row in read_rows(path):
    if isinstance(row, BadRow):
      raise UserError(f"{path}: row {index}: {row.reason}; every line of a .jsonl file is one "
                      "JSON object.")
    rows.append(row)
  return rows


def _hub_dataset(name: str, config: str | None, split: str):
  try:
    import datasets
  except ImportError as e:
    raise ResourceUnavailable(f"reading {name!r} from the hub needs the `datasets` package "
                              f"({e}); pip install datasets, or {OFFLINE_HINT}.") from e
  try:
    return datasets.load_dataset(name, config, split=split)
  except Exception as e:  # network, auth, missing dataset or split: all look alike from here
    raise ResourceUnavailable(
        f"could not read dataset {name!r} (config {config!r}, split {split!r}) from the hub: "
        f"{type(e).__name__}: {e}\nIf this machine is offline or the name is a local file "
        f"that does not exist, {OFFLINE_HINT}.") from e


# ---------------------------------------------------------------- tokens


class Encoded(list):
  """(ids int32[L], loss_mask bool[L]) pairs, with the indices of examples
  dropped as too long (`dropped`) and of those cut to max_len (`truncated`)."""

  def __init__(self, items=(), *, max_len: int = 0):
    super().__init__(items)
    self.max_len = max_len
    self.dropped: list[int] = []
    self.truncated: list[int] = []
    self.given_tokens = 0   # target tokens in given spans (no loss)

  def describe(self) -> str:
    text = f"{len(self):,} examples encoded"
    if self.dropped:
      text += (f"; {len(self.dropped):,} dropped as longer than max_len={self.max_len} or "
               f"with nothing to learn (first: example {self.dropped[0]})")
    text += (f"; {len(self.truncated):,} cut to max_len={self.max_len}"
             if self.truncated else "")
    return text + (f"; {self.given_tokens:,} target tokens given, not learned (tool "
                   "observations)" if self.given_tokens else "")


def _check_given(e: SFTExample, i: int) -> None:
  """The spans of `e.given`: in order, inside the target, not overlapping."""
  end = 0
  for span in e.given:
    ok = (isinstance(span, tuple) and len(span) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in span))
    if not ok or not end <= span[0] < span[1] <= len(e.target):
      raise UserError(f"example {i}: given span {span!r} is not a (start, end) pair with "
                      f"{end} <= start < end <= {len(e.target)} (the target's length), in "
                      "order and not overlapping; list the character spans of the target "
                      "that the model is given.")
    end = span[1]


def given_token_spans(e: SFTExample, target_ids: list[int], tokenizer) -> list[tuple[int, int]]:
  """`e.given` as [start, end) token spans of `target_ids` (the target encoded
  whole). Each edge is the length of the target encoded up to it. Where that is
  not a prefix of `target_ids` (a token crosses the edge), the edge moves
  outwards: a start to the first token that differs, an end past the first
  token whose decoded text reaches the edge, so no token holding given text
  is learned."""
  def edge(pos: int, start: bool) -> int:
    head = tokenizer.encode(e.target[:pos])
    n = len(head)
    if target_ids[:n] == head:
      return n
    k = next((j for j, (x, y) in enumerate(zip(head, target_ids)) if x != y), min(n, len(target_ids)))
    if start:
      return k
    return next((j for j in range(k + 1, len(target_ids) + 1)
                 if len(tokenizer.decode(target_ids[:j])) >= pos), len(target_ids))
  return [(edge(a, True), edge(b, False)) for a, b in e.given]


def encode(examples: Iterable[SFTExample], tokenizer, *, max_len: int, add_eos: bool = True,
           add_bos: bool | None = None, mask_prompt: bool = True,
           truncate: bool = False) -> tuple[Encoded, int]:
  """(encoded, number dropped): token ids and loss masks (see the module docstring
  for the boundary and the mask), and how many examples were left out.

  An example of more than `max_len` tokens (EOS included) is dropped and its
  index listed in `encoded.dropped` (a warning says so when more than 10% are
  dropped), or with `truncate=True` cut to its first `max_len` tokens (listed
  in `.truncated`; it loses its EOS). A cut example left with no token to
  learn (the prompt alone fills max_len) is dropped.
  `add_bos=None` starts each prompt with BOS where the tokenizer's
  `add_bos_default` says so, as evaluation and sampling encode prompts.
  """
  if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 2:
    raise UserError(f"max_len={max_len!r} must be an integer >= 2 (a prompt token and a "
                    f"target token); use seq_len + 1 of the rows you will pack into.")
  examples = list(examples)
  for i, e in enumerate(examples):
    if not isinstance(e, SFTExample):
      raise UserError(f"example {i} is a {type(e).__name__}, expected an SFTExample; build "
                      f"them with from_gsm8k, from_records or SFTExample(prompt, target).")
    _check_given(e, i)
  prompts = tokenizer.encode_batch([e.prompt for e in examples], add_bos=add_bos)
  targets = tokenizer.encode_batch([e.target for e in examples], add_eos=add_eos)
  out = Encoded(max_len=int(max_len))
  for i, (p, t) in enumerate(zip(prompts, targets)):
    ids = np.asarray(p + t, np.int32)
    mask = np.zeros(len(ids), np.bool_)
    mask[len(p) if mask_prompt else 0:] = True
    for a, b in given_token_spans(examples[i], t, tokenizer):
      mask[len(p) + a:len(p) + b] = False
      out.given_tokens += b - a
    mask[:1] = False  # nothing predicts the first token
    if len(ids) > max_len:
      if not truncate or not mask[:max_len].any():
        out.dropped.append(i)
        continue
      ids, mask = ids[:max_len], mask[:max_len]
      out.truncated.append(i)
    if not mask.any():
      out.dropped.append(i)  # an empty target without EOS: nothing to learn
      continue
    out.append((ids, mask))
  _warn_if_many_dropped(out, len(examples), truncate)
  return out, len(out.dropped)


DROP_WARNING_FRACTION = 0.1   # `encode` warns when it drops more than this share


def _warn_if_many_dropped(out: Encoded, total: int, truncate: bool) -> None:
  """One line on stderr when more than DROP_WARNING_FRACTION of the examples
  were dropped: training on the short rest changes what the model learns."""
  if not total or len(out.dropped) <= DROP_WARNING_FRACTION * total:
    return
  warnings.warn(
      f"{len(out.dropped):,} of {total:,} fine-tuning examples "
      f"({len(out.dropped) / total:.0%}) were dropped as longer than max_len={out.max_len} "
      f"tokens or with nothing to learn (first: example {out.dropped[0]}); training sees "
      f"only the shorter rest. Raise the row length (train.seq_len, up to the model's "
      f"context max_seq_len) or fine-tune a model with a longer context"
      + ("." if truncate else "; or pass truncate=True to cut long examples instead."),
      stacklevel=3)


# Rows (pack / pad) and seeded batches live in `jaxslm.data.packing`.
from jaxslm.data.packing import SFTBatches, batch_rows, batches, pack, pad  # noqa: E402,F401


# ---------------------------------------------------------------- loss


def masked_token_loss(logits_btv, targets_bt, weights_bt):
  """(sum_t w_t * CE_t / sum_t w_t, sum_t w_t), in float32; 0 loss when no weight.

  A token of weight 0 adds exactly 0 to the loss and to the gradient. Averaging
  micro-batch losses is not the token mean of their union: combine the sums
  (`loss * weight`) and divide by the total weight for that.
  """
  import jax.numpy as jnp  # lazily: the rest of this module is numpy
  import optax

  weights_bt = jnp.asarray(weights_bt, jnp.float32)
  ce_bt = optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits_btv, jnp.float32), targets_bt)
  total = jnp.sum(weights_bt)
  loss = jnp.sum(jnp.where(weights_bt != 0, ce_bt * weights_bt, 0.0))
  return loss / jnp.where(total > 0, total, 1.0), total
