"""GRPO reward functions for the `<reasoning>...</reasoning>\\n<solution>...</solution>` format.

    from jaxslm.train import rewards

    text = "<reasoning>3 bags of 12 pens: 3 * 12 = 36</reasoning>\\n<solution>36</solution>"
    rewards.score_format(text)              # 3.0
    rewards.score_process(text)             # 3.0  (the one step is right)
    rewards.score_accuracy(text, "36")      # 3.0
    total, parts = rewards.compute(rewards.REWARDS, rewards.DEFAULT_WEIGHTS,
                                   ["prompt"], [text], ["36"])
    # total == array([3.0]); parts["accuracy"] == array([3.0])

A reward function is a plain callable
`fn(prompts: list[str], completions: list[str], answers: list[str]) -> list[float]`
(decoded completions; gold final answers as strings such as "36" or "1,200").
`REWARDS` holds the three below, `MORE_REWARDS` "tool_format" (well-formed
calculator annotations or agent actions, `jaxslm.train.tool_rewards`);
`resolve` knows both and also imports "package.module:function".
Each scores on the same 0..3 scale (accuracy can go down to -1):

  * format    (the study's eq. 9)  3.0 when the stripped completion is exactly
              `<reasoning>X</reasoning>\\n<solution>Y</solution>`; otherwise 0.5
              per delimiter present plus 1.0 when all four are in order. This is
              3 x `format_compliance(text, "structured").partial`, so all four
              delimiters in order also earn 3.0 with text around them or a blank
              tag (accuracy then scores the blank answer).
  * process   (eq. 10-11)  every arithmetic statement of the reasoning (inside
              `<reasoning>...</reasoning>` when that tag exists, else the whole
              completion) is re-executed by `arithmetic_statements`; the reward
              is 3 x (weighted correct steps) / (weighted checkable steps), 0.0
              with none. Our reading of eq. 10-11: a step's weight is set by its
              operations (`step_kind`, `STEP_WEIGHTS`): "additive" 1.0,
              "multiplicative" 1.5, "mixed" 2.0.
  * accuracy  (eq. 12-13)  3.0 when the answer as written equals the gold string;
              1.5 when equal after normalization ("$1,200 dollars" == "1200",
              "36.00" == "36", "3/4" == "0.75", "5%" == "5"); else, both numeric
              and gold != 0, by the ratio r = pred / gold: 0.5 if 0.9 <= r <= 1.1,
              0.25 if 0.8 <= r <= 1.2, -0.5 otherwise; -1.0 for anything else.

`compute` calls each function once on the batch, checks what it returns (a
sequence of one finite real number per completion; never a broadcast scalar)
and returns the weighted total with the per-component arrays; a bad reward
function raises `RewardError` naming it, the item and the completion.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

import numpy as np

from jaxslm.errors import UserError
from jaxslm.evaluation.extract import get_extractor, normalize, to_number
from jaxslm.evaluation.metrics import arithmetic_statements, format_compliance
from jaxslm.train.tool_rewards import tool_format_reward

RewardFn = Callable[[list, list, list], Sequence[float]]

# The top of every component's scale: a perfect completion scores this in each.
MAX_REWARD = 3.0

# Process reward: the weight of a step by the kind of its operations (`step_kind`).
STEP_WEIGHTS = {"additive": 1.0, "multiplicative": 1.5, "mixed": 2.0}

# Accuracy reward tiers.
EXACT_REWARD = 3.0        # the answer as written is the gold string
NORMALIZED_REWARD = 1.5   # equal after normalization (units, "$", commas, decimals)
# (low, high, reward): the first band holding pred / gold, bounds inclusive.
RATIO_BANDS = ((Fraction(9, 10), Fraction(11, 10), 0.5),
               (Fraction(4, 5), Fraction(6, 5), 0.25))
RATIO_MISS_REWARD = -0.5  # numeric, gold != 0, ratio outside every band
WRONG_REWARD = -1.0       # no answer, not numeric, or gold 0 and pred not 0

# The weights of the combined reward: 0.2 format + 0.3 process + 0.5 accuracy.
DEFAULT_WEIGHTS = {"format": 0.2, "process": 0.3, "accuracy": 0.5}

# How much of a completion a RewardError quotes.
QUOTE_CHARS = 200

_REASONING = re.compile(r"<reasoning>(.*?)</reasoning>", re.DOTALL)
_SOLUTION = re.compile(r"<solution>(.*?)</solution>", re.DOTALL)
# A binary "+" / "-" follows an operand (digit, ".", ")"); a leading minus is a sign.
_ADDITIVE = re.compile(r"(?<=[\d.)])[ \t]*[-+\u2212]")
# "x" / "X" mean times only between two operands, as in `jaxslm.tools.calculate`.
_MULTIPLICATIVE = re.compile(r"[*/%\u00d7\u00f7]|(?<=[\d.)])[ \t]*[xX][ \t]*(?=[\d.($])")
# A number with trailing units or words: "36 pens", "5%", "3/4 cup", "12 km/h".
_WITH_UNITS = re.compile(r"(-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?)[ \t]*(?:%|[a-z][a-z \t./'-]*)?",
                         re.IGNORECASE)


class RewardError(UserError):
  """A reward function failed or returned something that is not one finite
  real number per completion."""


# ---------------------------------------------------------------- format
def score_format(text: str) -> float:
  """The format reward of one completion, in 0..3 (see the module docstring)."""
  return MAX_REWARD * format_compliance(text, "structured").partial


# ---------------------------------------------------------------- process
def step_kind(expr: str) -> str:
  """"additive" (only + and -), "multiplicative" (only * x × / ÷, also // % **)
  or "mixed" (both). Signs ("-3", "5 * -2") are not operations; an expression
  without any operation ("<<36=36>>") counts as "additive", the lightest."""
  if not isinstance(expr, str):
    raise UserError(f"step_kind expects an expression str, got {type(expr).__name__}; "
                    "pass a Statement's .expr")
  additive = bool(_ADDITIVE.search(expr))
  multiplicative = bool(_MULTIPLICATIVE.search(expr))
  if additive and multiplicative:
    return "mixed"
  return "multiplicative" if multiplicative else "additive"


def reasoning_text(text: str) -> str:
  """The content of the first `<reasoning>...</reasoning>`, else all of `text`."""
  m = _REASONING.search(text)
  return m.group(1) if m else text


def score_process(text: str) -> float:
  """3 x the weighted share of correct arithmetic steps in the reasoning; 0.0
  when it has no checkable step (see the module docstring)."""
  if not isinstance(text, str):
    raise UserError(f"score_process expects the completion as a str, got "
                    f"{type(text).__name__}; decode the tokens first")
  credited = total = 0.0
  for statement in arithmetic_statements(reasoning_text(text)):
    if statement.correct is None:
      continue
    weight = STEP_WEIGHTS[step_kind(statement.expr)]
    total += weight
    credited += weight if statement.correct else 0.0
  # One division of exact sums: 3 * 1 / 2.5 is exactly the float 1.2.
  return MAX_REWARD * credited / total if total else 0.0


# ---------------------------------------------------------------- accuracy
def answer_value(answer: str | None) -> Fraction | None:
  """The exact value of an answer, ignoring "$", commas, a final "." and
  trailing units or words: "$1,200 dollars" -> 1200, "36 pens" -> 36,
  "5%" -> 5, "3/4" -> 3/4, "18.00" -> 18; None when it is not a number."""
  text = normalize(answer)
  if text is None:
    return None
  m = _WITH_UNITS.fullmatch(text)
  return to_number(m.group(1)) if m else None


def written_answer(text: str, extractor: str = "solution") -> str | None:
  """The answer as the model wrote it, for the exact tier: the stripped content
  of the first `<solution>` tag for "solution" (so "36 pens" is not exactly
  "36"), else what the extractor returns, stripped; None when there is none."""
  if extractor == "solution":
    m = _SOLUTION.search(text)
    return (m.group(1).strip() or None) if m else None
  raw = get_extractor(extractor)(text)
  return raw.strip() if raw is not None else None


def score_accuracy(text: str, gold: str, extractor: str = "solution") -> float:
  """The accuracy reward of one completion against the gold answer string, the
  answer read by the extractor named `extractor` (see the module docstring)."""
  for name, value in (("completion", text), ("gold answer", gold)):
    if not isinstance(value, str):
      raise UserError(f"score_accuracy expects the {name} as a str, got "
                      f"{type(value).__name__} {value!r}; pass decoded text and the "
                      "gold final answer (e.g. gold_answer(solution))")
  extracted = get_extractor(extractor)(text)
  if extracted is None:
    return WRONG_REWARD
  if written_answer(text, extractor) == gold.strip():
    return EXACT_REWARD
  pred, target = answer_value(extracted), answer_value(gold)
  if pred is None or target is None:
    same = normalize(extracted) is not None and normalize(extracted) == normalize(gold)
    return NORMALIZED_REWARD if same else WRONG_REWARD
  if pred == target:
    return NORMALIZED_REWARD
  if target == 0:
    return WRONG_REWARD
  ratio = pred / target
  for low, high, reward in RATIO_BANDS:
    if low <= ratio <= high:
      return reward
  return RATIO_MISS_REWARD


def is_correct(text: str, gold: str, extractor: str = "solution") -> bool:
  """Whether the answer is right: the accuracy reward is at least 1.5."""
  return score_accuracy(text, gold, extractor) >= NORMALIZED_REWARD


# ---------------------------------------------------------------- batch callables
def format_reward(prompts: list[str], completions: list[str],
                  answers: list[str]) -> list[float]:
  """`score_format` of each completion."""
  del prompts, answers
  return [score_format(text) for text in completions]


def process_reward(prompts: list[str], completions: list[str],
                   answers: list[str]) -> list[float]:
  """`score_process` of each completion."""
  del prompts, answers
  return [score_process(text) for text in completions]


def accuracy_reward(prompts: list[str], completions: list[str], answers: list[str], *,
                    extractor: str = "solution") -> list[float]:
  """`score_accuracy` of each completion against its gold answer, read by
  `extractor` ("solution"; "final-answer" for agent episodes)."""
  del prompts
  if len(completions) != len(answers):
    raise UserError(f"accuracy_reward got {len(completions)} completions but "
                    f"{len(answers)} answers; pass one gold answer per completion")
  return [score_accuracy(text, gold, extractor) for text, gold in zip(completions, answers)]


REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "process": process_reward,
    "accuracy": accuracy_reward,
}
# Named rewards beyond the study's three (`resolve` knows them too).
MORE_REWARDS: dict[str, RewardFn] = {"tool_format": tool_format_reward}


def resolve(spec: str | RewardFn) -> RewardFn:
  """A reward function from a name in `REWARDS`, or "package.module:function"
  (imported; the function may be a dotted attribute path). A callable is
  returned as is."""
  if callable(spec):
    return spec
  names = ", ".join(sorted({**REWARDS, **MORE_REWARDS}))
  hint = f"use one of {names}, or 'package.module:function' for your own"
  if not isinstance(spec, str):
    raise RewardError(f"a reward must be named by a str, got {type(spec).__name__} "
                      f"{spec!r}; {hint}")
  if ":" not in spec:
    if spec in REWARDS or spec in MORE_REWARDS:
      return REWARDS.get(spec) or MORE_REWARDS[spec]
    raise RewardError(f"unknown reward {spec!r}; {hint}")
  module_name, _, attr = spec.partition(":")
  if not module_name or not attr:
    raise RewardError(f"reward {spec!r} is not 'package.module:function'; {hint}")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise RewardError(f"reward {spec!r}: cannot import module {module_name!r} ({e}); "
                      f"check the module path and that it is installed, or {hint}") from e
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise RewardError(f"reward {spec!r}: {module_name!r} has no attribute {attr!r}; "
                        f"check the function name, or {hint}")
    obj = getattr(obj, part)
  if not callable(obj):
    raise RewardError(f"reward {spec!r} is a {type(obj).__name__}, not callable; name a "
                      "function fn(prompts, completions, answers) -> list[float]")
  return obj


# ---------------------------------------------------------------- combining
def compute(fns: Mapping[str, RewardFn], weights: Mapping[str, float],
            prompts: Sequence[str], completions: Sequence[str],
            answers: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(weighted total [N] float64, {name: rewards [N] float64}) of the batch.

  Each function is called once with lists (copies, so one cannot alter what
  the next sees); what it returns is checked strictly (see `RewardError`)."""
  n = _check_inputs(prompts, completions, answers)
  weights = _check_weights(fns, weights)
  parts: dict[str, np.ndarray] = {}
  total = np.zeros(n, dtype=np.float64)
  for name, fn in fns.items():
    if not callable(fn):
      raise RewardError(f"reward {name!r} is a {type(fn).__name__}, not callable; pass a "
                        "function fn(prompts, completions, answers) -> list[float] "
                        "(resolve() turns names into functions)")
    try:
      out = fn(list(prompts), list(completions), list(answers))
    except Exception as e:
      raise RewardError(f"reward {_describe(name, fn)} raised {type(e).__name__}: {e}; "
                        "fix the function or drop it from the rewards") from e
    parts[name] = _check_output(name, fn, out, completions)
    total += weights[name] * parts[name]
  return total, parts


def _describe(name: str, fn: object) -> str:
  qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
  return f"{name!r} ({qualname})"


def _check_inputs(prompts, completions, answers) -> int:
  lengths = {}
  for label, value in (("prompts", prompts), ("completions", completions),
                       ("answers", answers)):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
      raise UserError(f"compute expects {label} as a list, got {type(value).__name__}; "
                      "pass one entry per completion")
    lengths[label] = len(value)
  if len(set(lengths.values())) != 1:
    got = ", ".join(f"{len_} {label}" for label, len_ in lengths.items())
    raise UserError(f"compute got {got}; pass one prompt and one gold answer per "
                    "completion (repeat each prompt's for its group)")
  return lengths["completions"]


def _check_weights(fns: Mapping[str, RewardFn],
                   weights: Mapping[str, float]) -> dict[str, float]:
  if not isinstance(fns, Mapping) or not fns:
    raise UserError(f"compute needs a non-empty dict of reward functions, got {fns!r}; "
                    f"e.g. {{name: resolve(name) for name in {sorted(REWARDS)}}}")
  if not isinstance(weights, Mapping):
    raise UserError(f"reward weights must be a dict, got {type(weights).__name__}; "
                    f"e.g. {DEFAULT_WEIGHTS}")
  missing = [name for name in fns if name not in weights]
  extra = [name for name in weights if name not in fns]
  if missing or extra:
    raise UserError(f"reward weights do not match the rewards {sorted(fns)}: missing "
                    f"{missing}, extra {extra}; give exactly one weight per reward")
  checked = {}
  for name in fns:
    w = weights[name]
    if not _finite_real(w):
      raise UserError(f"reward weight {name!r} is {w!r}; use a finite number such as "
                      f"{DEFAULT_WEIGHTS.get(name, 1.0)}")
    checked[name] = float(w)
  return checked


def _check_output(name: str, fn: object, out: object,
                  completions: Sequence[str]) -> np.ndarray:
  who = f"reward {_describe(name, fn)}"
  fix = "return one finite float per completion, e.g. a list[float]"
  if hasattr(out, "ndim") and hasattr(out, "shape"):  # numpy / jax arrays
    if out.ndim != 1:
      raise RewardError(f"{who} returned an array of shape {tuple(out.shape)}, expected "
                        f"({len(completions)},); {fix}")
    out = np.asarray(out)
    if out.dtype == np.bool_:
      raise RewardError(f"{who} returned a bool array; {fix}")
    out = out.tolist()
  elif isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
    raise RewardError(f"{who} returned a {type(out).__name__} ({_quote(repr(out))}), not a "
                      f"sequence of {len(completions)} numbers; {fix}")
  if len(out) != len(completions):
    raise RewardError(f"{who} returned {len(out)} rewards for {len(completions)} "
                      f"completions (expected length {len(completions)}, got {len(out)}); "
                      f"{fix}")
  values = np.empty(len(out), dtype=np.float64)
  for i, item in enumerate(out):
    if not _finite_real(item):
      raise RewardError(f"{who} returned {item!r} ({type(item).__name__}) at index {i}, "
                        f"for completion {_quote(completions[i])}; {fix}")
    values[i] = float(item)
  return values


def _finite_real(value: object) -> bool:
  """A real number (not a bool) whose float is finite (10**400 is not)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
    return False
  try:
    return math.isfinite(float(value))
  except (OverflowError, ValueError, TypeError):
    return False


def _quote(text: object) -> str:
  text = text if isinstance(text, str) else repr(text)
  if len(text) > QUOTE_CHARS:
    text = text[:QUOTE_CHARS] + "..."
  return repr(text)
