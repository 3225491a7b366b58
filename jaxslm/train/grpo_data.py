"""GRPO's data: the prompt pool, which prompts a step takes, the rollout batch
the loss sees, and the held-out evaluation.

Prompts come from GSM8K (`datasets` or a local directory / .jsonl) or from the
synthetic math generator (`jaxslm.data.synthetic`: training problems are its
indices 0, 1, ...; held-out ones start at `HELDOUT_OFFSET`, so the two never
overlap). Each problem becomes a prompt through a template (`structured` by
default: the <reasoning>/<solution> format the rewards score).

Step s takes prompts `order[s·P : (s+1)·P]` of an endless sequence of seeded
permutations of the pool (epoch e is permutation(seed, e)): a pure function of
(seed, step), so a resumed run sees exactly the prompts it would have seen.
With several processes, process p samples the p-th contiguous share of them
(`process_slice`), each prompt with the seed of its position in the whole step,
so the completions do not depend on how many processes there are.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from jaxslm.data.synthetic import HELDOUT_OFFSET  # noqa: F401 (re-exported)
from jaxslm.errors import UserError

TOO_LONG = ("truncate", "refuse")


@dataclasses.dataclass
class PromptPool:
  questions: list[str]
  golds: list[str]
  texts: list[str]               # the prompts as text
  ids: list[list[int]]           # the prompts as token ids (after any truncation)
  truncated: int                 # how many prompts were cut to the budget
  source: str

  def __len__(self) -> int:
    return len(self.ids)


def load_problems(data, *, heldout: bool, limit: int) -> tuple[list[tuple[str, str]], str]:
  """[(question, gold)] and a description; `heldout` picks the evaluation split."""
  if data.source == "synthetic":
    from jaxslm.data.synthetic import SyntheticMath
    gen = SyntheticMath(data.synthetic_seed, max_steps=data.synthetic_max_steps)
    start = HELDOUT_OFFSET if heldout else 0
    n = limit if limit > 0 else (200 if heldout else 5000)
    probs = [gen.problem(start + i) for i in range(n)]
    return ([(p.question, str(p.final_answer)) for p in probs],
            f"{n} synthetic problems (seed {data.synthetic_seed}, indices {start}..{start + n - 1})")
  if data.source == "gsm8k":
    from jaxslm.data import gsm8k
    split = gsm8k.load(data.eval_split if heldout else data.split, data.config,
                       path=data.path or None)
    examples = split.examples
    if limit > 0:
      examples, _ = gsm8k.select(examples, limit, seed=1234)
    return [(e.question, e.gold) for e in examples], split.describe()
  raise UserError(f"data.source={data.source!r}; valid sources: gsm8k, synthetic.")


def encode_pool(problems, tok, template, *, budget: int, too_long: str, source: str,
                add_bos: bool | None = None) -> PromptPool:
  """Prompts as ids; one longer than `budget` tokens is cut to its last `budget`
  tokens and counted ("truncate") or refused with its index ("refuse").
  `add_bos=None`: BOS first where the tokenizer's `add_bos_default` says so."""
  if too_long not in TOO_LONG:
    raise UserError(f"data.too_long={too_long!r}; valid values: {', '.join(TOO_LONG)}.")
  if budget < 1:
    raise UserError(f"data.prompt_budget={budget} must be a positive number of tokens.")
  texts = [template.prompt(q) for q, _ in problems]
  ids, truncated = [], 0
  for i, text in enumerate(texts):
    x = tok.encode(text, add_bos=add_bos)
    if len(x) > budget:
      if too_long == "refuse":
        raise UserError(f"prompt {i} of {source} has {len(x)} tokens, over the prompt budget "
                        f"data.prompt_budget={budget}; raise the budget, or set "
                        "data.too_long=truncate to keep the last tokens of long prompts.")
      x, truncated = x[-budget:], truncated + 1
    ids.append(x)
  return PromptPool([q for q, _ in problems], [g for _, g in problems], texts, ids, truncated,
                    source)


def step_indices(n_pool: int, per_step: int, seed: int, step: int) -> np.ndarray:
  """Pool indices of the prompts of `step` (0-based); see the module doc."""
  out = []
  for k in range(step * per_step, (step + 1) * per_step):
    epoch, pos = divmod(k, n_pool)
    out.append(np.random.default_rng([seed, epoch]).permutation(n_pool)[pos])
  return np.asarray(out, np.int64)


def process_slice(per_step: int, process_index: int, process_count: int) -> range:
  """The positions (within a step's prompts) this process samples: a contiguous
  share, so each group of G completions stays inside one process."""
  if per_step % process_count:
    raise UserError(f"grpo.prompts_per_step={per_step} must be divisible by the {process_count} "
                    f"processes (each samples its own prompts); use a multiple of "
                    f"{process_count}.")
  share = per_step // process_count
  return range(process_index * share, (process_index + 1) * share)


def rollout_seed(seed: int, step: int, i: int) -> int:
  """The sampling seed of prompt i at `step` (its G completions fold in j)."""
  return int(np.random.default_rng([seed, step, i, 7]).integers(0, 2**31 - 1))


def pad_to(n: int, multiple: int = 32) -> int:
  return int(math.ceil(max(n, 1) / multiple) * multiple)


def rollout_lengths(prompt_lens, completion_lens, *, prompt_budget: int,
                    max_new_tokens: int) -> tuple[int, int]:
  """(prefix slots Lp, suffix slots M) for `rollout_batch`: the longest prompt
  (less its last token) and the longest completion of the step, rounded up to a
  multiple of 32 (few distinct shapes, so few compilations) and capped by the
  budgets. Pass every process's lengths so all build the same shapes."""
  need_p, need_c = max(max(prompt_lens) - 1, 1), max(max(completion_lens), 1)
  return (max(need_p, min(pad_to(need_p), prompt_budget - 1)),
          max(need_c, min(pad_to(need_c), max_new_tokens)))


def rollout_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], group: int,
                  pad_id: int, prefix_slots: int, suffix_slots: int, *, model_masks=None,
                  logprobs=None) -> dict[str, np.ndarray]:
  """The rollouts laid out for the shared-prefix forward (`grpo_step.policy_logprobs`):
  each prompt's tokens run once, not once per completion of its group.

  - "prefix" [P, Lp]: prompt p without its last token, left-padded, so that it
    ends at slot Lp - 1 and its completions continue at slot Lp (a row's real
    tokens fill consecutive slots, as sliding-window masks assume);
    "prefix_mask" [P, Lp] marks the real ones.
  - "suffix" [N, M]: row r holds the last token of prompt r // group, then
    completion r without its last token, right-padded; "positions" [N, M] are
    their positions (prompt length - 1 + j), so the logits at suffix slot j
    predict completion token j, which is "targets" [N, M].
  - "mask" [N, M]: 1.0 on the completion tokens the model wrote (the only ones
    scored): every completion token, or where `model_masks[r]` is true (a
    tool's output is 0: it stays in "suffix", as context, but is not learned).
  - "sampler_logp" [N, M] (with `logprobs`): the sampler's log p of each token.
  Rows end where their completions end: padding is never read off the ids, so
  pad_id may equal EOS."""
  n, p = len(completion_ids), len(prompt_ids)
  if n != p * group:
    raise ValueError(f"{n} completions for {p} prompts x group {group}")
  for name, per_row in (("model_masks", model_masks), ("logprobs", logprobs)):
    if per_row is not None and (len(per_row) != n or any(
        len(x) != len(c) for x, c in zip(per_row, completion_ids))):
      raise ValueError(f"{name} must hold one value per completion token of each row")
  plens = [len(x) for x in prompt_ids]
  if min(plens) < 1 or max(plens) - 1 > prefix_slots or \
      max(len(c) for c in completion_ids) > suffix_slots:
    raise ValueError(f"prompts of {min(plens)}..{max(plens)} tokens or completions of up to "
                     f"{max(len(c) for c in completion_ids)} do not fit {prefix_slots} prefix and "
                     f"{suffix_slots} suffix slots")
  prefix = np.full((p, prefix_slots), pad_id, np.int32)
  prefix_mask = np.zeros((p, prefix_slots), bool)
  for i, x in enumerate(prompt_ids):
    if len(x) > 1:
      prefix[i, prefix_slots - len(x) + 1:] = x[:-1]
      prefix_mask[i, prefix_slots - len(x) + 1:] = True
  suffix = np.full((n, suffix_slots), pad_id, np.int32)
  targets = np.full((n, suffix_slots), pad_id, np.int32)
  mask = np.zeros((n, suffix_slots), np.float32)
  for r, c in enumerate(completion_ids):
    x = prompt_ids[r // group]
    row = [x[-1], *c][:suffix_slots]
    suffix[r, :len(row)] = row
    targets[r, :len(c)] = c
    mask[r, :len(c)] = 1.0 if model_masks is None else np.asarray(model_masks[r], np.float32)
  positions = (np.repeat(np.asarray(plens, np.int32) - 1, group)[:, None]
               + np.arange(suffix_slots, dtype=np.int32)[None, :])
  out = {"prefix": prefix, "prefix_mask": prefix_mask, "suffix": suffix,
         "positions": positions, "targets": targets, "mask": mask}
  if logprobs is not None:
    out["sampler_logp"] = np.zeros((n, suffix_slots), np.float32)
    for r, x in enumerate(logprobs):
      out["sampler_logp"][r, :len(x)] = x
  return out


def completion_text(c, tok, template) -> str:
  """The text the rewards read: a kept stop string ("</solution>") put back, as evaluation does."""
  from jaxslm.evaluation.gsm8k import _with_kept_stop
  return _with_kept_stop(c, tok, template)


def generate_for(model_cfg, params, tok, template, ids, *, max_new_tokens, temperature, n, seeds,
                 top_p: float = 1.0):
  """The jitted sampler with the template's stops and the tokenizer's EOS ids."""
  from jaxslm.sampling import generate
  return generate(model_cfg, params, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, n=n, seed=seeds, eos_id=tok.eos_id,
                  stop_token_ids=[i for i in tok.eos_ids if i != tok.eos_id],
                  stop_strings=list(template.stop), tokenizer=tok, truncate=True,
                  pad_id=tok.pad_id)


def evaluate_heldout(model_cfg, params, tok, template, pool: PromptPool, reward_fns, weights, *,
                     max_new_tokens: int, batch_size: int, extractor: str, samples: int = 0,
                     temperature: float = 1.0, tools: str = "none", max_steps: int = 8,
                     max_tool_tokens: int = 32) -> dict:
  """Greedy accuracy (mean ± stderr), mean reward and format compliance on `pool`;
  with `samples` k > 0 also pass@1 at `temperature` over k completions per
  problem ("eval_sampled_accuracy", stderr over problems, and its mean reward).
  Problem i's samples use seed 10**7 + i at every call, so two evaluations of a
  run differ by the policy, not by the draw. `tools`: the tool mode the
  completions are written in (`grpo_rollouts.sample`); the rewards read the
  whole trajectory."""
  from jaxslm.evaluation.metrics import format_compliance
  from jaxslm.evaluation.stats import mean_stderr
  from jaxslm.train import rewards
  from jaxslm.train.grpo_rollouts import sample
  t0 = time.perf_counter()

  def score(n: int, temp: float):
    texts = []
    per_batch = max(1, batch_size // n)
    for b in range(0, len(pool), per_batch):
      out = sample(tools, model_cfg, params, tok, template, pool.ids[b:b + per_batch], group=n,
                   max_new_tokens=max_new_tokens, temperatures=temp,
                   seeds=[10**7 + i for i in range(b, min(b + per_batch, len(pool)))],
                   max_steps=max_steps, max_tool_tokens=max_tool_tokens)
      texts += [r.text for r in out.rows]
    prompts = [x for x in pool.texts for _ in range(n)]
    golds = [x for x in pool.golds for _ in range(n)]
    total, _ = rewards.compute(reward_fns, weights, prompts, texts, golds)
    correct = np.asarray([float(rewards.is_correct(t, g, extractor=extractor))
                          for t, g in zip(texts, golds)]).reshape(len(pool), n).mean(axis=1)
    return texts, total, correct

  texts, total, correct = score(1, 0.0)
  acc, se = mean_stderr(correct.tolist())
  out = {"eval_accuracy": acc, "eval_accuracy_stderr": se,
         "eval_reward": float(np.mean(total)),
         "eval_format": float(np.mean([format_compliance(t, template.answer_format).strict
                                       for t in texts])) if template.answer_format != "none"
         else None,
         "eval_problems": len(pool)}
  if samples > 0:
    if temperature <= 0:
      raise UserError(f"eval.temperature={temperature} with eval.samples={samples}: sampled "
                      "pass@1 needs a temperature > 0 (greedy accuracy is always reported).")
    _, s_total, s_correct = score(samples, temperature)
    s_acc, s_se = mean_stderr(s_correct.tolist())
    out.update(eval_sampled_accuracy=s_acc, eval_sampled_accuracy_stderr=s_se,
               eval_sampled_reward=float(np.mean(s_total)))
  out["eval_s"] = time.perf_counter() - t0
  return out
