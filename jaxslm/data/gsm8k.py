"""GSM8K grade-school math problems: loading, validation, subsets and few-shot exemplars.

  from jaxslm.data import gsm8k

  test = gsm8k.load("test", path="../shared/data/gsm8k")   # or the hub when path is None
  print(test.describe())      # test: 1,319 problems from ../shared/data/gsm8k/test.jsonl (...)
  problems, note = gsm8k.select(test.examples, limit=200, seed=1234)
  shots = gsm8k.fewshot(gsm8k.load("train", path=...).examples, 8, sampler="random")
  prompt_answer = gsm8k.strip_calculator(shots[0].answer)   # drops <<2*3=6>> markup

Where the data comes from (:func:`load`):

  * ``path`` a directory: ``{split}.jsonl`` for config "main",
    ``{split}_socratic.jsonl`` for config "socratic" (the layout of the files
    in ``openai/gsm8k``'s repository).
  * ``path`` a ``.jsonl`` file (one row per line) or a ``.json`` file (a list of
    rows; one that starts with "{" is read as JSON Lines, as ``datasets`` does):
    read as is, whatever ``split`` says; the split is named after the file's stem.
  * ``path`` None: the directory in the environment variable ``JAXSLM_GSM8K_DIR``
    when it is set, otherwise ``datasets.load_dataset(hf_name, config, split=split)``.

Each row is an object with string fields "question" and "answer"; the answer is
a worked solution whose final answer follows the last "####". A row that breaks
this (not UTF-8, bad JSON, not an object, a field missing, empty or not a string, no final
answer) is skipped and recorded in :attr:`Split.skipped` with its reason, never
dropped silently; a split with no usable row at all is an error. Blank lines in
a .jsonl file are not rows. A file that cannot be read at all (a directory, a
symbolic link loop, a damaged .gz, a .json that is not JSON) is a UserError.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from typing import Any, Iterable, Iterator

import numpy as np

from jaxslm import file_checks
from jaxslm.data import jsonl
from jaxslm.errors import ResourceUnavailable, UserError

CONFIGS = ("main", "socratic")
SAMPLERS = ("first_n", "random")
ENV_DIR = "JAXSLM_GSM8K_DIR"
HF_NAME = "openai/gsm8k"
OFFLINE_HINT = "pass a local directory, e.g. --data ../shared/data/gsm8k"
_CALCULATOR = re.compile(r"<<[^<>]*>>")


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem. ``index`` is its row index in the split file or dataset."""

  index: int
  question: str
  answer: str  # the full worked solution, ending in "#### N"
  gold: str  # the final answer: after the last "####", without "," and "$"


@dataclasses.dataclass
class Split:
  """The usable problems of one split, and what was read to get them."""

  name: str
  examples: list[Example]
  source: str  # a file path, or "hf:openai/gsm8k/main/test"
  rows: int  # rows read, malformed ones included
  skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (row, reason)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def describe(self) -> str:
    """One line for logs, e.g. "test: 1,319 problems from /x/test.jsonl (0 malformed rows skipped)"."""
    plural = "row" if self.num_skipped == 1 else "rows"
    skipped = f"{self.num_skipped:,} malformed {plural} skipped"
    if self.skipped:
      index, reason = self.skipped[0]
      skipped += f"; first: row {index}: {reason}"
    return f"{self.name}: {len(self.examples):,} problems from {self.source} ({skipped})"


# ---------------------------------------------------------------- loading


def load(split: str = "test", config: str = "main", path: str | None = None,
         hf_name: str = HF_NAME) -> Split:
  """Reads one GSM8K split; see the module docstring for where from.

  Malformed rows are skipped and listed in ``Split.skipped``. Raises UserError
  for a bad config, a missing file or a split without one usable row, and
  ResourceUnavailable when the hub cannot be reached (pass a local directory).
  """
  if config not in CONFIGS:
    raise UserError(f"GSM8K config {config!r} is not one of {CONFIGS}; pass config='main' "
                     f"(answers as worked solutions) or 'socratic' (sub-question form).")
  if not isinstance(split, str) or not split.strip():
    raise UserError(f"GSM8K split {split!r} must be a non-empty name such as 'test' or 'train'.")
  if path is None and os.environ.get(ENV_DIR):
    path = os.environ[ENV_DIR]
  if path is None:
    source = f"hf:{hf_name}/{config}/{split}"
    return _finish(split, source, enumerate(_hf_rows(hf_name, config, split)))
  file = _resolve_file(os.path.expanduser(str(path)), split, config)
  name = split if os.path.isdir(os.path.expanduser(str(path))) else _stem(file)
  return _finish(name, file, read_rows(file))


def _resolve_file(path: str, split: str, config: str) -> str:
  if os.path.isdir(path):
    expected = f"{split}.jsonl" if config == "main" else f"{split}_socratic.jsonl"
    file = os.path.join(path, expected)
    if os.path.lexists(file):
      file_checks.check_file(file, "GSM8K file")   # a directory, a link loop, ...
      return file
    have = sorted(n for n in os.listdir(path) if n.endswith(".jsonl"))
    raise UserError(
        f"GSM8K directory {path!r} has no {expected!r} (split {split!r}, config {config!r}); "
        f"its .jsonl files are {have or 'none'}. Pick a split and config those files "
        f"provide ('NAME.jsonl' is config 'main', 'NAME_socratic.jsonl' is 'socratic'), "
        f"or point at another directory.")
  if os.path.lexists(path):
    file_checks.check_file(path, "GSM8K file")
  if not os.path.exists(path):
    raise UserError(f"GSM8K path {path!r} does not exist (cwd {os.getcwd()!r}); pass a "
                     f"directory of {{split}}.jsonl files, or a .jsonl / .json file.")
  if not path.lower().endswith((".jsonl", ".json")):
    raise UserError(f"GSM8K file {path!r} is neither .jsonl (one row per line) nor .json "
                     f"(a list of rows); convert it, or pass the directory holding the splits.")
  return path


def _stem(file: str) -> str:
  return os.path.splitext(os.path.basename(file))[0]


def read_rows(file: str) -> Iterator[tuple[int, Any]]:
  """(row index, row) pairs of a .jsonl file (or a .json list); a line that is
  not UTF-8 or not JSON comes as a `BadRow` with the reason, for the caller
  to count or raise. A file that cannot be read at all is a UserError."""
  if file.lower().endswith(".json"):
    text = jsonl.read_text(file, "GSM8K file")
    if not text.lstrip().startswith("{"):
      rows, reason = jsonl.parse_or_reason(text)
      if reason is not None:
        raise UserError(f"{file!r} is {reason}; a .json file must hold a list of rows, or "
                         "rename it .jsonl for one row per line.")
      if not isinstance(rows, list):
        raise UserError(f"{file!r} holds a JSON {type(rows).__name__}, expected a "
                         f"list of rows (JSON objects).")
      yield from enumerate(rows)
      return
  index = 0  # JSON Lines (also a .json file whose first row starts the text)
  for lineno, raw in jsonl.raw_lines(file, "GSM8K file"):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      yield index, BadRow(f"line {lineno} is not UTF-8 text (byte {e.start})")
      index += 1
      continue
    if not line.strip():
      continue
    row, reason = jsonl.parse_or_reason(line)
    yield index, row if reason is None else BadRow(f"line {lineno} is {reason}")
    index += 1


def _hf_rows(hf_name: str, config: str, split: str) -> Iterable[Any]:
  try:
    import datasets
  except ImportError as e:
    raise ResourceUnavailable(
        f"reading GSM8K from the hub ({hf_name!r}) needs the `datasets` package ({e}); "
        f"pip install datasets, or {OFFLINE_HINT} (or set {ENV_DIR}).") from e
  try:
    return datasets.load_dataset(hf_name, config, split=split)
  except ValueError as e:
    if "split" in str(e).lower():
      raise UserError(f"GSM8K dataset {hf_name!r} (config {config!r}) has no split "
                       f"{split!r}: {e}. Use 'train' or 'test'.") from e
    raise _hub_error(hf_name, config, split, e) from e
  except Exception as e:  # network, auth, missing dataset: all look alike from here
    raise _hub_error(hf_name, config, split, e) from e


def _hub_error(hf_name: str, config: str, split: str, e: Exception) -> ResourceUnavailable:
  return ResourceUnavailable(
      f"could not read GSM8K from the hub ({hf_name!r}, config {config!r}, split {split!r}): "
      f"{type(e).__name__}: {e}\nIf this machine is offline or cannot reach the hub, "
      f"{OFFLINE_HINT} (or set {ENV_DIR}).")


# ---------------------------------------------------------------- validation


@dataclasses.dataclass(frozen=True)
class BadRow:
  reason: str


def _finish(name: str, source: str, rows: Iterable[tuple[int, Any]]) -> Split:
  examples: list[Example] = []
  skipped: list[tuple[int, str]] = []
  count = 0
  for index, row in rows:
    count += 1
    example = _example(index, row)
    if isinstance(example, str):
      skipped.append((index, example))
    else:
      examples.append(example)
  if not examples:
    detail = "; ".join(f"row {i}: {r}" for i, r in skipped[:3])
    more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
    found = f"all {count:,} rows are malformed: {detail}{more}" if count else "it holds no rows"
    raise UserError(
        f"GSM8K split {name!r} from {source} has no usable problem: {found}. Each row must be "
        f"a JSON object with non-empty string fields \"question\" and \"answer\", the answer "
        f"ending in a line \"#### N\"; fix or replace the file.")
  return Split(name=name, examples=examples, source=source, rows=count, skipped=skipped)


def _example(index: int, row: Any) -> Example | str:
  """The Example of a row, or the reason it is malformed."""
  if isinstance(row, BadRow):
    return row.reason
  if not isinstance(row, dict):
    return f"a JSON {type(row).__name__}, expected an object"
  fields = {}
  for key in ("question", "answer"):
    if key not in row:
      return f"no field {key!r} (keys: {sorted(row)})"
    value = row[key]
    if not isinstance(value, str):
      return f"field {key!r} holds a {type(value).__name__}, expected a string"
    if not value.strip():
      return f"field {key!r} is empty"
    fields[key] = value
  answer = fields["answer"]
  if "####" not in answer:
    return "the answer has no final answer after '####'"
  gold = _gold(answer)
  if not gold:
    return "the answer's '####' is followed by nothing"
  return Example(index=index, question=fields["question"], answer=answer, gold=gold)


def _gold(answer: str) -> str:
  return answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "").strip()


# ---------------------------------------------------------------- subsets


def select(examples: list[Example], limit: int | None,
           seed: int = 1234) -> tuple[list[Example], str | None]:
  """A random subset of ``limit`` problems, sorted by index, and a note for the user.

  ``limit`` None or 0 means all problems (note None); a limit larger than the
  number of problems also means all, with a note saying so.

  The chosen positions depend only on ``(len(examples), limit, seed)``: two
  checkpoints evaluated with the same limit and seed see the same problems.
  They are the first ``limit`` of one seeded permutation, so a smaller limit
  with the same seed picks a subset of what a larger one picks.
  """
  if limit is None or limit == 0:
    return list(examples), None
  if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
    raise UserError(f"--limit {limit!r} must be an integer (0 or None = all problems).")
  if limit < 0:
    raise UserError(f"--limit {limit} must be >= 0 (0 = all problems); pass a positive "
                     f"number of problems to evaluate, or 0 for all.")
  total = len(examples)
  if limit >= total:
    note = (f"--limit {limit} is larger than the {total} problems: using all {total}"
            if limit > total else None)
    return list(examples), note
  order = np.random.default_rng(seed).permutation(total)[:int(limit)]
  return sorted((examples[int(i)] for i in order), key=lambda e: e.index), None


def fewshot(pool: list[Example], k: int, *, sampler: str = "first_n", seed: int = 1234,
            exclude: str | None = None) -> list[Example]:
  """``k`` exemplars from ``pool`` (usually the train split), never one whose
  question equals ``exclude`` (the problem being asked).

  "first_n" takes the first k in pool order; "random" draws k without
  replacement with ``random.Random(seed)``. For a given seed the random draw is
  the same whatever ``exclude`` is, unless ``exclude`` is among the drawn, in
  which case the next drawn replaces it: every test question gets the same
  exemplars except those that would have seen themselves.
  """
  if sampler not in SAMPLERS:
    raise UserError(f"few-shot sampler {sampler!r} is not one of {SAMPLERS}; pass "
                     f"sampler='first_n' (the first k) or 'random' (k drawn with the seed).")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
    raise UserError(f"few-shot k={k!r} must be an integer >= 0 (0 = zero-shot).")
  excluded = sum(1 for e in pool if e.question == exclude) if exclude is not None else 0
  available = len(pool) - excluded
  if k > available:
    but = f" ({excluded} excluded as the question asked)" if excluded else ""
    raise UserError(f"few-shot k={k} is larger than the {available} exemplars in the pool"
                     f"{but}; lower k or pass a larger pool (the train split has 7,473).")
  if sampler == "first_n":
    positions: Iterable[int] = range(len(pool))
  else:
    draw = min(len(pool), k + max(1, excluded))
    positions = random.Random(seed).sample(range(len(pool)), draw)
  picked: list[Example] = []
  for i in positions:
    if len(picked) == k:
      break
    if exclude is None or pool[i].question != exclude:
      picked.append(pool[i])
  return picked


def strip_calculator(answer: str) -> str:
  """Removes GSM8K's calculator annotations: "2*3=<<2*3=6>>6" -> "2*3=6"."""
  return _CALCULATOR.sub("", answer)
