"""What fine-tuning trains on and is measured by: the SFT examples (GSM8K,
synthetic problems or instruction data through a prompt template, encoded,
packed or padded, a validation share held out) and the fixed problems scored
by exact match at each evaluation."""

from __future__ import annotations

import numpy as np

from jaxslm.config import ConfigDict
from jaxslm.errors import UserError
from jaxslm.train.session import log


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
    problems = synthetic_examples(d, start=0, n=d.synthetic_problems)
    examples = sft.from_gsm8k(problems, d.template, keep_annotations=d.keep_annotations)
    source = (f"{len(problems)} synthetic problems (seed {d.synthetic_seed}, at most "
              f"{d.synthetic_max_steps} steps)")
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
  """GSM8K exact match of the adapted params as they are (no merge)."""
  from jaxslm.evaluation import EvalOptions, evaluate_gsm8k
  template = config.data.template if config.data.source in ("gsm8k", "synthetic") else "qa"
  res = evaluate_gsm8k((model_cfg, params, tok), problems, EvalOptions(
      template=template, max_new_tokens=config.eval.max_new_tokens,
      batch_size=config.eval.batch_size, rouge=config.eval.rouge, perplexity=False,
      extractors=("strict-match", "flexible-extract")), log=log)
  out = {"gsm8k_em": res.summary["accuracy"]["mean"],
         "gsm8k_em_stderr": res.summary["accuracy"]["stderr"]}
  if config.eval.rouge:
    out["rouge1"] = res.summary["rouge1"]["mean"]
  return out
