"""What sampling returns: `Completion` (one sampled continuation) and
`Generation` (all of them, with the prompts as run and the timing), with short
reprs for notebooks."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np


def _preview(text, width: int = 60) -> str:
  if text is None:
    return "None"
  return repr(text if len(text) <= width else text[:width - 3] + "...")


@dataclasses.dataclass
class Completion:
  prompt_index: int
  sample_index: int
  tokens: list[int]            # generated ids (EOS / stop token / stop string's tokens included)
  logprobs: np.ndarray         # float32 [len(tokens)]: log p(token) under the model (temperature 1)
  finish_reason: str           # eos | stop_token | stop_string | length | context
  text: str | None = None      # decoded, without EOS / stop token / stop string (None: no tok)
  forced: np.ndarray | None = None  # bool [len(tokens)]: inserted by the calculator hook
  temperature: float = 0.0

  def __repr__(self) -> str:   # short: no arrays
    return (f"Completion(prompt {self.prompt_index}, sample {self.sample_index}, "
            f"{len(self.tokens)} tokens, {self.finish_reason}, text={_preview(self.text)})")


@dataclasses.dataclass
class Generation:
  """What `generate` (and `jaxslm.sample(..., return_result=True)`) returns.

  Two views of the texts: `texts` is flat and prompt-major (prompt i's
  completion j is texts[i * n + j], as in `completions`), `texts_by_prompt` is
  nested, texts_by_prompt[i][j]. `jaxslm.sample`'s default return is
  `texts_by_prompt` with the inner level dropped when n == 1 (and the outer
  one for a single str prompt)."""
  completions: list[Completion]
  prompt_tokens: list[list[int]]   # the prompts as run (after any truncation)
  n: int
  timing: dict
  truncated: list[int] = dataclasses.field(default_factory=list)  # prompts cut (truncate=True)

  @property
  def texts(self) -> list[str | None]:
    """Flat, prompt-major: prompt i's completion j is texts[i * n + j]."""
    return [c.text for c in self.completions]

  @property
  def texts_by_prompt(self) -> list[list[str | None]]:
    """Nested: texts_by_prompt[i] = the n texts of prompt i."""
    return [[c.text for c in group] for group in self.grouped()]

  def grouped(self) -> list[list[Completion]]:
    """completions[i] = the n completions of prompt i."""
    return [self.completions[i * self.n:(i + 1) * self.n] for i in range(len(self.prompt_tokens))]

  def __repr__(self) -> str:   # a notebook cell shows this: counts and a preview, no arrays
    lengths = [len(p) for p in self.prompt_tokens]
    new = [len(c.tokens) for c in self.completions]
    reasons = dict(Counter(c.finish_reason for c in self.completions))
    head = (f"Generation({len(lengths)} prompts x n={self.n}: prompt tokens "
            f"{min(lengths)}..{max(lengths)}, new tokens {sum(new)} "
            f"({min(new)}..{max(new)} per completion), finish {reasons}")
    if self.truncated:
      head += f", {len(self.truncated)} prompts truncated"
    if "total_s" in self.timing:
      head += f", {self.timing['total_s']:.2f} s"
    lines = [head + ")"]
    shown = self.completions[:4]
    lines += [f"  [{c.prompt_index}][{c.sample_index}] {_preview(c.text)} "
              f"({len(c.tokens)} tokens, {c.finish_reason})" for c in shown]
    if len(self.completions) > len(shown):
      lines.append(f"  ... {len(self.completions) - len(shown)} more; .texts_by_prompt, "
                   ".completions for all")
    return "\n".join(lines)
