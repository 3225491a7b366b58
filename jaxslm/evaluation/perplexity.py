"""Perplexity of given text under a model: reference solutions or any held-out text.

    from jaxslm.evaluation.perplexity import perplexity
    out = perplexity(jaxslm.load("runs/sft"), targets=[" 3 * 12 = 36\\n#### 36"],
                     contexts=["Question: ...\\nAnswer:"])
    out["ppl"], out["nll_per_token"], out["per_example"][0]["nll"]

Each target is scored token by token given its context (teacher forcing):
only the target's tokens count. Perplexity is the corpus-level
exp(sum of NLL / number of target tokens), the usual definition; the mean of
per-example perplexities is skewed by short targets and is not reported.

Batched and jitted: sequences are right-padded to a power-of-two length (the
model is causal, so padding on the right changes no real position) and
grouped by length. Logits are computed only where a target token is
predicted, and each group holds as many rows as keep those [B, K, V] float32
logits under `max_logit_bytes`. A sequence longer than the model's context keeps its
target and the end of its context; a target that alone cannot fit is cut at
the end and counted in `truncated`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm.errors import UserError
from jaxslm.models import Decoder, ModelConfig
from jaxslm.sampling.engine import compute_params
from jaxslm.sampling.generate import bucket


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def _nll(params, tokens_bt, index_bk, target_bk, *, model_cfg: ModelConfig):
  """NLL of target[:, k] given tokens[:, :index[:, k] + 1]: logits only at the K
  scored positions of each row, and logsumexp(logits) - logits[target] rather
  than a [B, K, V] log-softmax."""
  logits_bkv = Decoder(model_cfg).apply({"params": params}, tokens_bt,
                                        logit_index_bk=index_bk).astype(jnp.float32)
  picked_bk = jnp.take_along_axis(logits_bkv, target_bk[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits_bkv, axis=-1) - picked_bk


def token_nll(model_cfg: ModelConfig, params, contexts: Sequence[Sequence[int]],
              targets: Sequence[Sequence[int]], *, max_logit_bytes: int = 1 << 29,
              max_batch: int = 64) -> tuple[list[np.ndarray], int]:
  """Per-token NLL (float32 arrays, one per target) and the number of targets cut.

  `contexts[i]` may be empty only if the target's first token is to be skipped
  (nothing predicts it): then target token 0 is not scored.

  Rows are grouped by length; each group's batch is the most rows (a power of
  two, at most `max_batch`) whose [B, K, V] float32 logits at the K scored
  positions stay under `max_logit_bytes`.
  """
  if len(contexts) != len(targets):
    raise UserError(f"token_nll: {len(contexts)} contexts but {len(targets)} targets; "
                    "give one context (possibly empty) per target.")
  ctx_len = model_cfg.max_seq_len
  seqs, starts, truncated = [], [], 0
  for i, (c, t) in enumerate(zip(contexts, targets)):
    c, t = list(c), list(t)
    if not t:
      raise UserError(f"token_nll: target {i} is empty; every scored text needs a token.")
    if len(t) > ctx_len:
      t, truncated = t[:ctx_len], truncated + 1
    keep = ctx_len + 1 - len(t)   # T+1 tokens give T predictions
    c = c[max(0, len(c) - keep):] if keep > 0 else []
    seqs.append(c + t)
    starts.append(max(len(c), 1))
  run_params = compute_params(params, model_cfg)
  out: list[np.ndarray | None] = [None] * len(seqs)
  order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
  scored = [len(seqs[i]) - starts[i] for i in range(len(seqs))]
  pos = 0
  while pos < len(order):
    length = min(bucket(len(seqs[order[pos]]) - 1, 16), ctx_len)   # model inputs
    fits = [i for i in order[pos:pos + max_batch] if len(seqs[i]) - 1 <= length]
    k = min(bucket(max(scored[i] for i in fits), 16), length)
    rows = max(1, min(max_batch, max_logit_bytes // (k * model_cfg.vocab_size * 4)))
    rows = 1 << (rows.bit_length() - 1)   # a power of two: the batch bucket is never padded
    group = fits[:rows]
    pos += len(group)
    batch = bucket(len(group), 1)
    tokens = np.zeros((batch, length), np.int32)
    index = np.zeros((batch, k), np.int32)
    target = np.zeros((batch, k), np.int32)
    for r, i in enumerate(group):
      seq, s, n = seqs[i], starts[i], scored[i]
      tokens[r, :len(seq) - 1] = seq[:-1]   # causal: padding on the right changes nothing
      index[r, :n] = np.arange(s - 1, len(seq) - 1)
      target[r, :n] = seq[s:]
    nll = np.asarray(_nll(run_params, jnp.asarray(tokens), jnp.asarray(index),
                          jnp.asarray(target), model_cfg=model_cfg))
    for r, i in enumerate(group):
      out[i] = nll[r, :scored[i]].astype(np.float32)
  return out, truncated


def perplexity(model, targets: Sequence[str], contexts: Sequence[str] | None = None, *,
               add_bos: bool | None = None, **kwargs) -> dict:
  """Perplexity of `targets` (strings) given `contexts` (strings or None = no context).

  A context starts with BOS when `add_bos` says so (None: the tokenizer's
  `add_bos_default`), as a prompt does when sampling; an empty context is BOS
  alone where the tokenizer has one.

  `model` is a checkpoint path, `jaxslm.load(...)` or (model_cfg, params, tokenizer).
  Returns {"ppl", "nll_per_token", "tokens", "texts", "truncated", "per_example":
  [{"nll", "tokens", "ppl"}]}.
  """
  from jaxslm.api import resolve_model
  loaded = resolve_model(model)
  tok = loaded.tokenizer
  targets = list(targets)
  if not targets:
    raise UserError("perplexity: no texts to score; give at least one target string.")
  contexts = [""] * len(targets) if contexts is None else list(contexts)
  ctx_ids = [tok.encode(c, add_bos=add_bos) if c
             else ([tok.bos_id] if tok.bos_id is not None else [])
             for c in contexts]
  tgt_ids = [tok.encode(t) for t in targets]
  for i, t in enumerate(tgt_ids):
    if not t:
      raise UserError(f"perplexity: target {i} ({targets[i]!r}) encodes to no tokens.")
  nlls, truncated = token_nll(loaded.model_cfg, loaded.params, ctx_ids, tgt_ids, **kwargs)
  total = float(sum(float(n.sum()) for n in nlls))
  count = sum(n.size for n in nlls)
  per = [{"nll": float(n.sum()), "tokens": int(n.size),
          "ppl": math.exp(float(n.mean())) if n.size else float("nan")} for n in nlls]
  return {"ppl": math.exp(total / count) if count else float("nan"),
          "nll_per_token": total / count if count else float("nan"), "tokens": int(count),
          "texts": len(targets), "truncated": truncated, "per_example": per}


def text_perplexity(model, text: str, *, stride: int | None = None, **kwargs) -> dict:
  """Perplexity of one long held-out text, in sliding windows.

  The text's tokens are scored `stride` at a time (default: half the
  context), each chunk conditioned on up to `context - stride + 1` tokens
  before it, so every token but the first is scored exactly once, with at
  least `context - stride + 1` tokens of history (or all there is).
  """
  from jaxslm.api import resolve_model
  loaded = resolve_model(model)
  ctx = loaded.model_cfg.max_seq_len
  stride = stride or max(1, ctx // 2)
  if not 1 <= stride <= ctx:
    raise UserError(f"text_perplexity: stride={stride} must be in [1, context={ctx}].")
  ids = loaded.tokenizer.encode(text)
  if len(ids) < 2:
    raise UserError(f"text_perplexity: the text has {len(ids)} tokens; need at least 2.")
  contexts, targets = [], []
  for s in range(0, len(ids), stride):   # ctx + 1 tokens give ctx predictions
    contexts.append(ids[max(0, s - (ctx - stride + 1)):s])
    targets.append(ids[s:s + stride])
  nlls, _ = token_nll(loaded.model_cfg, loaded.params, contexts, targets, **kwargs)
  total, count = float(sum(float(n.sum()) for n in nlls)), sum(n.size for n in nlls)
  return {"ppl": math.exp(total / count), "nll_per_token": total / count, "tokens": int(count),
          "windows": len(targets)}
