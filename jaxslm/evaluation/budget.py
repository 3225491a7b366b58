"""Fitting evaluation prompts and their token budgets into the model's context.

A model of context C given a prompt of L tokens can write at most C - L
tokens. Evaluation asks for `max_new_tokens` at most, so each prompt's budget
is min(max_new_tokens, C - L): a long prompt gets a smaller budget, never a
cut. A prompt that leaves fewer than `min_budget` of the context (too few
to write an answer) is handled by `long_prompts`:

  "skip"      not generated; scored wrong with finish reason "prompt_too_long"
              (the default: the problem stays in the denominator, so accuracy
              still compares across checkpoints and settings),
  "truncate"  cut to its last C - min_budget tokens (few-shot prompts lose
              their first exemplars), as lm-evaluation-harness does,
  "error"     a UserError before anything is generated.

Every skip, cut and reduced budget is counted in the `Plan`, whose `messages()`
say so in words; evaluation prints them and puts them in the report.
"""

from __future__ import annotations

import dataclasses

from jaxslm.errors import UserError

LONG_PROMPTS = ("skip", "truncate", "error")
SKIPPED_REASON = "prompt_too_long"


@dataclasses.dataclass
class Plan:
  ids: list[list[int]]        # the prompts to run (cut where long_prompts="truncate")
  skipped: list[int]          # indices not generated (long_prompts="skip")
  truncated: list[int]        # indices cut to their last tokens
  budget_cut: list[int]       # indices whose budget is below max_new_tokens
  context: int
  max_new_tokens: int
  min_budget: int
  longest: int                # tokens in the longest prompt, before any cut

  def budget(self, i: int) -> int:
    """New tokens prompt i can get."""
    return min(self.max_new_tokens, self.context - len(self.ids[i]))

  def messages(self) -> list[str]:
    n = len(self.ids)
    out = []
    why = (f"longer than the model's {self.context}-token context allows with at least "
           f"{self.min_budget} new tokens (longest: {self.longest} tokens)")
    fix = ("use fewer few-shot exemplars, a shorter template or a model with a longer "
           "context")
    if self.skipped:
      out.append(f"{len(self.skipped)} of {n} prompts are {why}: not generated, scored "
                 f"wrong (finish reason {SKIPPED_REASON!r}); {fix}, or pass "
                 f"long_prompts='truncate' (--long-prompts truncate) to keep their last tokens")
    if self.truncated:
      out.append(f"{len(self.truncated)} of {n} prompts are {why}: their first tokens were "
                 f"cut, keeping the last {self.context - self.min_budget}; {fix}")
    if self.budget_cut:
      budgets = sorted(self.budget(i) for i in self.budget_cut)
      out.append(f"{len(self.budget_cut)} of {n} prompts leave less than max_new_tokens="
                 f"{self.max_new_tokens} of the {self.context}-token context: their budget is "
                 f"the rest of the context ({budgets[0]} to {budgets[-1]} tokens, median "
                 f"{budgets[len(budgets) // 2]}); completions that need more end with "
                 f"finish reason 'context'")
    return out


def check_settings(max_new_tokens: int, min_budget: int, long_prompts: str) -> None:
  if long_prompts not in LONG_PROMPTS:
    raise UserError(f"long_prompts={long_prompts!r}; expected one of {', '.join(LONG_PROMPTS)}.")
  if isinstance(min_budget, bool) or not isinstance(min_budget, int) or min_budget < 1:
    raise UserError(f"min_budget={min_budget!r} is invalid: expected an int >= 1 "
                    "(the fewest new tokens a prompt must leave room for, e.g. 16).")


def plan(ids: list[list[int]], context: int, max_new_tokens: int, *, min_budget: int = 16,
         long_prompts: str = "skip") -> Plan:
  """Budgets for prompts `ids` (token lists) in a model of `context` tokens; see the module doc.

  `min_budget` is clipped to `max_new_tokens` (asking for 8 tokens needs room for 8)
  and to context - 1. Raises UserError for long_prompts="error" when a prompt is too long.
  """
  check_settings(max_new_tokens, min_budget, long_prompts)
  min_new = max(1, min(min_budget, max_new_tokens, context - 1))
  keep = context - min_new
  long = [i for i, x in enumerate(ids) if len(x) > keep]
  longest = max((len(x) for x in ids), default=0)
  if long and long_prompts == "error":
    raise UserError(
        f"{len(long)} of {len(ids)} prompts are longer than the model's {context}-token context "
        f"allows with at least {min_new} new tokens (first: prompt {long[0]}, "
        f"{len(ids[long[0]])} tokens; longest {longest}). Use fewer few-shot exemplars, a "
        "shorter template or a model with a longer context; or long_prompts='skip' "
        "(--long-prompts skip) to score them wrong, or 'truncate' to keep their last tokens.")
  out = [list(x) for x in ids]
  skipped, truncated = [], []
  for i in long:
    if long_prompts == "truncate":
      out[i] = out[i][-keep:]
      truncated.append(i)
    else:
      skipped.append(i)
  skip = set(skipped)
  cut = [i for i, x in enumerate(out) if i not in skip and context - len(x) < max_new_tokens]
  return Plan(out, skipped, truncated, cut, context, max_new_tokens, min_new, longest)
