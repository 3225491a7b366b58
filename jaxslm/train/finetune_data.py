"""What fine-tuning trains on and is measured by: the SFT examples (GSM8K,
synthetic problems or instruction data through a prompt template, encoded,
packed or padded, a validation share held out) and the fixed problems scored
by exact match at each evaluation.

Synthetic problems come in three formats (`data.synthetic_format`), the warm
starts of GRPO's tool modes (`grpo.tools`):

  * "text": the template's target (calculator annotations as
    `data.keep_annotations` says), evaluated without tools;
  * "calculator": the template's target with its `<<expr=value>>` annotations,
    evaluated with the sampler's calculator hook;
  * "agent": the thought / action / observation traces of
    `jaxslm.data.synthetic.to_react`, prompted in the "react" agent format
    (`Question: ...\nThought:`), evaluated as agent episodes with the calculator.
"""

from __future__ import annotations

import numpy as np

from jaxslm.config import ConfigDict
from jaxslm.errors import UserError
from jaxslm.train.session import log

SYNTHETIC_FORMATS = ("text", "calculator", "agent")


def build_data(config: ConfigDict, tok, seq_len: int):
  """(train_tokens, train_weights, val_tokens, val_weights, info)."""
  from jaxslm.data import gsm8k, sft
  d = config.data
  if d.source == "gsm8k":
    split = gsm8k.load(d.split, d.config, path=d.path or None)
    log(split.describe())
    examples = sft.from_gsm8k(split.examples, d.template, keep_annotations=d.keep_annotations)
    source = split.describe()
  elif d.source == "synthetic":
    fmt = synthetic_format(d)
    problems = synthetic_examples(d, start=0, n=d.synthetic_problems)
    examples = (agent_examples(problems) if fmt == "agent" else
                sft.from_gsm8k(problems, d.template, keep_annotations=d.keep_annotations))
    source = (f"{len(problems)} synthetic problems (seed {d.synthetic_seed}, at most "
              f"{d.synthetic_max_steps} steps) as {fmt}")
  elif d.source == "instructions":
    examples = sft.load_instruction_data(d.path, split=d.split, prompt_field=d.prompt_field,
                                         target_field=d.target_field, input_field=d.input_field)
    source = f"{len(examples)} instruction examples from {d.path}"
  else:
    raise UserError(f"data.source={d.source!r}; valid sources: gsm8k, synthetic, "
                    "instructions.")
  rng = np.random.default_rng(config.train.seed)
  order = rng.permutation(len(examples))
  n_val = min(d.val_examples, len(examples) // 5)
  val = [examples[i] for i in order[:n_val]]
  train = [examples[i] for i in order[n_val:]]
  enc_train, dropped = sft.encode(train, tok, max_len=seq_len + 1, mask_prompt=d.mask_prompt)
  enc_val, _ = sft.encode(val, tok, max_len=seq_len + 1, mask_prompt=d.mask_prompt)
  if not len(enc_train):
    raise UserError(f"no training example fits train.seq_len={seq_len} ({dropped} too long); "
                    "raise train.seq_len.")
  layout = sft.pack if d.packing else sft.pad
  tr_tokens, tr_weights = layout(enc_train, seq_len, tok.pad_id)
  va_tokens, va_weights = layout(enc_val, seq_len, tok.pad_id) if enc_val else (None, None)
  info = {"source": source, "train_examples": len(enc_train), "val_examples": len(enc_val),
          "dropped_too_long": dropped, "train_rows": int(tr_tokens.shape[0]),
          "target_tokens": int(tr_weights.sum()), "packing": bool(d.packing)}
  if enc_train.given_tokens:   # tool observations in agent traces: read, not learned
    info["given_tokens_not_learned"] = enc_train.given_tokens
  return tr_tokens, tr_weights, va_tokens, va_weights, info


def synthetic_examples(d, *, start: int, n: int) -> list:
  """Synthetic problems `start`..`start+n-1` as GSM8K examples."""
  from jaxslm.data.gsm8k import Example
  from jaxslm.data.synthetic import SyntheticMath
  gen = SyntheticMath(d.get("synthetic_seed", 0), max_steps=d.get("synthetic_max_steps", 4))
  if n <= 0:
    raise UserError(f"data.synthetic_problems={n} must be a positive integer.")
  return [Example(start + i, p.question, p.answer, str(p.final_answer))
          for i, p in ((i, gen.problem(start + i)) for i in range(n))]


def synthetic_format(d) -> str:
  """`data.synthetic_format`, checked against the other data fields."""
  fmt = d.get("synthetic_format", "text")
  if fmt not in SYNTHETIC_FORMATS:
    raise UserError(f"data.synthetic_format={fmt!r}; valid formats: "
                    f"{', '.join(SYNTHETIC_FORMATS)}.")
  if fmt != "text" and d.source != "synthetic":
    raise UserError(f"data.synthetic_format={fmt!r} applies to data.source=synthetic, not "
                    f"{d.source!r}; set data.source=synthetic or data.synthetic_format=text.")
  if fmt == "calculator" and not d.keep_annotations:
    raise UserError("data.synthetic_format=calculator trains on the <<expr=value>> "
                    "annotations, but data.keep_annotations=False drops them; set it to True.")
  return fmt


def agent_examples(problems) -> list:
  """Each problem's `to_react` trace split into the "react" agent prompt
  (`Question: ...\nThought:`) and the rest, the target."""
  from jaxslm.agent import get_agent_format
  from jaxslm.data.sft import SFTExample
  from jaxslm.data.synthetic import Problem, to_react
  fmt = get_agent_format("react")
  out = []
  for e in problems:
    trace = to_react(Problem(e.question, e.answer, int(e.gold), 0))
    prompt = fmt.prompt(e.question, ())
    if not trace.startswith(prompt):
      raise UserError(f"synthetic problem {e.index}: its agent trace does not start with the "
                      f"react prompt {prompt[:60]!r}; the trace and agent formats disagree.")
    target = trace[len(prompt):]
    out.append(SFTExample(prompt, target, given=observation_spans(target, fmt)))
  return out


def observation_spans(target: str, fmt) -> tuple[tuple[int, int], ...]:
  """The character spans of an agent trace that the agent loop writes, not the
  model: after each stop string ("\nObservation:", which the model writes to
  call the tool), the rest of the format's observation text, the tool's output
  and the cue that follows it (" 36\nThought:")."""
  pre, _, post = fmt.observation.partition("{observation}")
  spans, at = [], 0
  stop = fmt.stop[0]
  if not pre.startswith(stop):
    raise UserError(f"agent format: its observation text {fmt.observation!r} does not start "
                    f"with its stop string {stop!r}; the given spans cannot be found.")
  while (i := target.find(stop, at)) >= 0:
    start = i + len(stop)
    end = target.find(post, start)
    end = len(target) if end < 0 else end + len(post)
    spans.append((start, end))
    at = end
  return tuple(spans)


def _gsm8k_subset(config: ConfigDict):
  """The fixed problems scored at each evaluation (same seed, same problems):
  GSM8K's, or held-out synthetic ones when the data are synthetic."""
  from jaxslm.data import gsm8k
  from jaxslm.data.synthetic import HELDOUT_OFFSET
  e = config.eval
  if e.problems <= 0:
    return []
  if config.data.source == "synthetic":
    return synthetic_examples(config.data, start=HELDOUT_OFFSET, n=e.problems)
  on_gsm8k = config.data.source == "gsm8k"
  path = e.path or (config.data.path if on_gsm8k else "") or None
  split = gsm8k.load(e.split, config.data.config if on_gsm8k else "main", path=path)
  problems, _ = gsm8k.select(split.examples, e.problems, seed=e.seed)
  return problems


def evaluate_exact_match(config, model_cfg, params, tok, problems) -> dict:
  """GSM8K exact match of the adapted params as they are (no merge), in the
  synthetic format's tool mode (the calculator hook, or agent episodes)."""
  from jaxslm.evaluation import EvalOptions, evaluate_gsm8k
  fmt = synthetic_format(config.data) if config.data.source == "synthetic" else "text"
  if fmt == "agent":
    return _agent_exact_match(config, model_cfg, params, tok, problems)
  template = config.data.template if config.data.source in ("gsm8k", "synthetic") else "qa"
  res = evaluate_gsm8k((model_cfg, params, tok), problems, EvalOptions(
      template=template, max_new_tokens=config.eval.max_new_tokens,
      batch_size=config.eval.batch_size, rouge=config.eval.rouge, perplexity=False,
      extractors=("strict-match", "flexible-extract"), calculator=fmt == "calculator"), log=log)
  out = {"gsm8k_em": res.summary["accuracy"]["mean"],
         "gsm8k_em_stderr": res.summary["accuracy"]["stderr"]}
  if config.eval.rouge:
    out["rouge1"] = res.summary["rouge1"]["mean"]
  return out


def _agent_exact_match(config, model_cfg, params, tok, problems) -> dict:
  """Greedy agent episodes ("react" format, the calculator) on `problems`;
  an answer is right when the accuracy reward reads it as right."""
  from jaxslm.evaluation.stats import mean_stderr
  from jaxslm.train import grpo_rollouts, rewards
  template = grpo_rollouts.prompt_template("react", "agent")
  e, correct = config.eval, []
  for b in range(0, len(problems), e.batch_size):
    chunk = problems[b:b + e.batch_size]
    out = grpo_rollouts.sample(
        "agent", model_cfg, params, tok, template,
        [tok.encode(template.prompt(p.question), add_bos=None) for p in chunk], group=1,
        max_new_tokens=e.max_new_tokens, temperatures=0.0, seeds=list(range(len(chunk))))
    correct += [float(rewards.is_correct(r.text, p.gold, extractor="final-answer"))
                for r, p in zip(out.rows, chunk)]
  acc, se = mean_stderr(correct)
  return {"gsm8k_em": acc, "gsm8k_em_stderr": se}
