"""A jaxslm model backend for lm-evaluation-harness, registered as `jaxslm`.

    python -m jaxslm.evaluation.harness --model jaxslm \\
        --model_args checkpoint=runs/sft,dtype=bfloat16,batch_size=32 --tasks arc_easy,hellaswag
    # quantize=int8 in --model_args runs int8 projection kernels; the same arguments as `lm_eval`; `jaxslm-lm-eval` is the installed script

    import lm_eval
    from jaxslm.evaluation.lm_eval_backend import JaxslmLM
    lm = JaxslmLM(checkpoint="runs/sft")            # or JaxslmLM(model=jaxslm.load(...))
    lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])

`lm-eval` is an optional dependency (`pip install 'jaxslm[lm-eval]'`). The
harness has no plugin hook for out-of-tree models, so the bare `lm_eval`
command does not know this backend; importing this module registers it, and
`python -m jaxslm.evaluation.harness` (installed as `jaxslm-lm-eval`) is
`lm_eval`'s own command line with it registered.

Scoring follows the harness's `hf` backend, so numbers are comparable with
published ones: a request's input is (context + continuation)[-(L+1):][:-1]
(left truncation at the context L), the continuation is scored at its own
positions only (logits at those positions, not the whole [B, T, V]), and
`is_greedy` means every continuation token is the argmax. Rolling
loglikelihoods use the harness's own disjoint windows. Requests cut to fit
are counted in `lm.truncated`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm.errors import UserError

try:
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import register_model
  from lm_eval import utils as _lm_utils
  from lm_eval.models import utils as _model_utils
except ImportError as e:   # pragma: no cover - exercised only without the extra
  raise ImportError("jaxslm's lm-evaluation-harness backend needs lm-eval: "
                    "pip install 'jaxslm[lm-eval]' (or pip install lm-eval).") from e

from jaxslm.models import Decoder, ModelConfig, init_cache
from jaxslm.quant import apply_quantize
from jaxslm.sampling import batching
from jaxslm.sampling.engine import prefill_cache, prefill_chunk
from jaxslm.sampling.engine import compute_params
from jaxslm.sampling.generate import bucket, generate

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def _score(params, tokens_bt, index_bk, targets_bk, mask_bk, *, model_cfg: ModelConfig):
  """Sum of log p(target) over each row's continuation, and whether all were argmax."""
  logits_bkv = Decoder(model_cfg).apply({"params": params}, tokens_bt, logit_index_bk=index_bk)
  return _sums(logits_bkv, targets_bk, mask_bk)


def _sums(logits_bkv, targets_bk, mask_bk):
  logp_bkv = jax.nn.log_softmax(logits_bkv.astype(jnp.float32), axis=-1)
  logp_bk = jnp.take_along_axis(logp_bkv, targets_bk[..., None], axis=-1)[..., 0]
  greedy_bk = jnp.argmax(logits_bkv, axis=-1) == targets_bk
  return (jnp.where(mask_bk, logp_bk, 0.0).sum(-1),
          jnp.all(jnp.where(mask_bk, greedy_bk, True), axis=-1))


@functools.partial(jax.jit, static_argnames=("model_cfg", "chunk"))
def _score_shared(params, prefix_up, prefix_len_u, owner_b, suffix_bm, targets_bm, mask_bm, *,
                  model_cfg: ModelConfig, chunk: int):
  """`_score` with each distinct prefix run once: multiple-choice requests share
  their context. Prefixes [U, P] are left-padded into a KV cache, `chunk`
  queries at a time (the sampler's prefill: memory linear in P); request b
  continues prefix owner_b[b] with its suffix [M] (the last context token and
  the continuation but its last token), whose logits score the continuation."""
  (u, p), m = prefix_up.shape, suffix_bm.shape[1]
  model = Decoder(model_cfg)
  pad_u = p - prefix_len_u
  slot_s = jnp.arange(p + m, dtype=jnp.int32)
  kv_mask_us = (slot_s[None] >= pad_u[:, None]) & (slot_s[None] < p)
  positions_up = jnp.maximum(slot_s[None, :p] - pad_u[:, None], 0)
  cache = prefill_cache(params, prefix_up, positions_up, kv_mask_us,
                        init_cache(model_cfg, u, p + m), model_cfg, chunk)
  cache = jax.tree.map(lambda x: x[owner_b], cache)
  kv_mask_bs = kv_mask_us[owner_b] | (slot_s[None] >= p)
  # Padding after a suffix may run past the context: clamp its positions (a
  # learned position table has no row there, and a NaN key would leak).
  positions_bm = jnp.minimum(prefix_len_u[owner_b][:, None] + jnp.arange(m, dtype=jnp.int32)[None],
                             model_cfg.max_seq_len - 1)
  logits_bmv, _ = model.apply({"params": params}, suffix_bm, positions_bm, cache=cache,
                              cache_index=p, kv_mask_bs=kv_mask_bs)
  return _sums(logits_bmv, targets_bm, mask_bm)


def _length_bucket(n: int, minimum: int = 16) -> int:
  """Padded length for n tokens: powers of two and 3/4 of them (16, 24, 32, 48, 64,
  96, ...), so padding wastes at most a third while few shapes compile."""
  p = bucket(n, minimum)
  three_quarters = p * 3 // 4
  return three_quarters if n <= three_quarters and three_quarters >= minimum else p


def _parse_bool(name: str, value) -> bool | None:
  if value is None or isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ("true", "1", "yes"):
    return True
  if text in ("false", "0", "no"):
    return False
  raise UserError(f"{name}={value!r}: expected true or false.")


def _parse_int(name: str, value, minimum: int = 1) -> int:
  try:
    out = int(value)
  except (TypeError, ValueError):
    out = None
  if out is None or out < minimum or isinstance(value, bool):
    raise UserError(f"{name}={value!r}: expected an integer >= {minimum}.")
  return out


@register_model("jaxslm")
class JaxslmLM(TemplateLM):
  """lm-evaluation-harness model over a jaxslm checkpoint (or a loaded model).

  Model args: checkpoint (path; or model= a `jaxslm.load` result from Python),
  dtype (float32 | bfloat16 | float16; default: the checkpoint's compute dtype),
  batch_size (int, or "auto" = 32), max_length (default: the model's context),
  max_gen_toks (default 256), add_bos_token (default: the tokenizer's
  `add_bos_default`, true for models converted from Hugging Face tokenizers
  that prepend BOS, as Llama 3/Mistral/Gemma ones do and GPT-2/Qwen/Phi-2 ones
  do not; false for jaxslm's own), seed (sampling seed for do_sample requests),
  share_prefixes (default true: a batch whose requests share contexts, such as a
  multiple-choice question's choices, runs each context once through a KV cache),
  quantize (none | int8: projection kernels as int8, weight-only | int8-dynamic:
  activations and head too; `jaxslm.quant`), token_budget (generation batches
  hold at most this many rows x KV-cache slots, so long prompts run in smaller
  batches; default auto: from the device's free memory, `sampling.batching`;
  0: batch_size rows).
  """

  def __init__(self, checkpoint: str | None = None, model=None, dtype: str | None = None,
               batch_size: int | str = 32, max_length: int | None = None,
               max_gen_toks: int | str = 256, add_bos_token=None, seed: int | str = 0,
               share_prefixes=True, quantize: str | None = None, token_budget="auto",
               pretrained: str | None = None, device=None, max_batch_size=None, **unused):
    super().__init__()
    from jaxslm.api import resolve_model
    if unused:
      log.warning("jaxslm backend: ignoring model args %s", sorted(unused))
    source = model if model is not None else (checkpoint or pretrained)
    if source is None:
      raise UserError("The jaxslm lm-eval backend needs a model: --model_args checkpoint=DIR "
                      "(a jaxslm run workdir, checkpoints/ dir or step dir).")
    loaded = apply_quantize(resolve_model(source), quantize)
    cfg = loaded.model_cfg
    if dtype not in (None, "auto"):
      if str(dtype) not in DTYPES:
        raise UserError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)} or auto.")
      cfg = dataclasses.replace(cfg, dtype=str(dtype))
    self.model_cfg = cfg
    self.loaded = loaded
    self.tok = loaded.tokenizer
    self.params = compute_params(loaded.params, cfg)
    self._batch_size = 32 if str(batch_size) == "auto" else _parse_int("batch_size", batch_size)
    self._max_length = (cfg.max_seq_len if max_length is None
                        else _parse_int("max_length", max_length, 2))
    if self._max_length > cfg.max_seq_len:
      raise UserError(f"max_length={self._max_length} exceeds the model's context "
                      f"{cfg.max_seq_len}; leave it unset or lower it.")
    self._max_gen_toks = _parse_int("max_gen_toks", max_gen_toks)
    bos = self.tok.bos_id
    self.add_bos_token = _parse_bool("add_bos_token", add_bos_token)
    if self.add_bos_token is None:
      self.add_bos_token = bool(getattr(self.tok, "add_bos_default", False))
    if self.add_bos_token and bos is None:
      raise UserError(f"add_bos_token=true but tokenizer {self.tok.name!r} has no BOS token.")
    self.seed = _parse_int("seed", seed, 0)
    self.token_budget = (batching.default_token_budget(cfg) if str(token_budget) == "auto"
                         else _parse_int("token_budget", token_budget, 0))
    self.share_prefixes = bool(_parse_bool("share_prefixes", share_prefixes))
    self.truncated = {"loglikelihood": 0, "loglikelihood_rolling": 0, "generate_until": 0}

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
    """--model_args win over the harness's own --batch_size / --device defaults
    (`batch_size=32` in model_args is the documented way to set it)."""
    extra = {k: v for k, v in (additional_config or {}).items()
             if v is not None and k not in arg_dict}
    return cls(**arg_dict, **extra)

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    return cls.create_from_arg_obj(_lm_utils.simple_parse_args_string(arg_string),
                                   additional_config)

  # ------------------------------------------------------------ properties

  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def prefix_token_id(self) -> int:
    return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def tokenizer_name(self) -> str:
    return self.tok.name.replace("/", "__")

  def chat_template(self, chat_template: bool | str = False) -> str | None:
    return self.tok.chat_template if chat_template not in (False, None) else None

  def get_model_info(self) -> dict:
    return {"model_path": self.loaded.path, "model_dtype": self.model_cfg.dtype,
            "model_num_parameters": int(sum(np.prod(x.shape) for x in
                                            jax.tree.leaves(self.loaded.params))),
            "jaxslm_truncated": dict(self.truncated)}

  # ------------------------------------------------------------ tokens

  def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                 left_truncate_len: int | None = None, **kwargs) -> list[int]:
    add_bos = self.add_bos_token if add_special_tokens is None else bool(add_special_tokens)
    bos_text = self.tok.token_text(self.tok.bos_id) if self.tok.bos_id is not None else None
    if add_special_tokens is None and bos_text and string.startswith(bos_text):
      add_bos = False      # the text already starts with BOS (e.g. a chat template wrote it)
    # Special-token text ("<|im_start|>" from a chat template) maps to its id where
    # the tokenizer can do that; SentencePiece tokenizers encode text as text.
    ids = self.tok.encode(string, add_bos=add_bos and self.tok.bos_id is not None,
                          allow_special=_maps_special_text(self.tok))
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def tok_decode(self, tokens) -> str:
    return self.tok.decode(tokens)

  def apply_chat_template(self, chat_history: list[dict[str, str]],
                          add_generation_prompt: bool = True) -> str:
    text = self.tok.render_chat(chat_history, add_generation_prompt=add_generation_prompt)
    if not add_generation_prompt and chat_history and chat_history[-1].get("role") == "assistant":
      # continue_final_message: end the prompt at the prefilled assistant text
      last = chat_history[-1]["content"].strip()
      cut = text.rfind(last)
      if cut >= 0:
        text = text[:cut + len(last)]
    return text

  # ------------------------------------------------------------ scoring

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                            **kwargs) -> list[tuple[float, bool]]:
    """requests: [((context, continuation), context_ids, continuation_ids)]."""
    length = self.max_length
    rows = []
    for i, (_, ctx, cont) in enumerate(requests):
      if not cont:
        raise UserError(f"loglikelihood request {i} has an empty continuation; "
                        "the harness always scores at least one token.")
      whole = list(ctx) + list(cont)
      if len(whole) > length + 1:
        self.truncated["loglikelihood"] += 1
      inp = whole[-(length + 1):][:-1]
      n_cont = min(len(cont), len(inp))   # continuation tokens that have a predictor
      rows.append((inp, list(cont)[-n_cont:]))
    # Requests that share a prefix (a multiple-choice question's choices) sit
    # together, so a batch can run each distinct prefix once.
    prefix = [tuple(inp[:len(inp) - len(cont)]) for inp, cont in rows]
    order = sorted(range(len(rows)), key=lambda i: (-len(prefix[i]), prefix[i]))
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    b = self.batch_size
    for start in range(0, len(order), b):
      group = order[start:start + b]
      distinct = list(dict.fromkeys(prefix[i] for i in group))
      if self.share_prefixes and len(distinct) <= b // 2:
        logp_b, greedy_b = self._shared_batch(group, rows, prefix, distinct)
      else:
        logp_b, greedy_b = self._plain_batch(group, rows)
      for r, i in enumerate(group):
        out[i] = (float(logp_b[r]), bool(greedy_b[r]))
        if requests[i][0] is not None:
          self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
    return out

  def _plain_batch(self, group, rows):
    """One forward over each request's whole input; logits at its continuation."""
    b = self.batch_size
    t = min(_length_bucket(max(len(rows[i][0]) for i in group)), self.max_length)
    k = bucket(max(len(rows[i][1]) for i in group), 1)
    tokens = np.zeros((b, t), np.int32)
    index, targets = np.zeros((b, k), np.int32), np.zeros((b, k), np.int32)
    mask = np.zeros((b, k), bool)
    for r, i in enumerate(group):
      inp, cont = rows[i]
      tokens[r, :len(inp)] = inp
      index[r, :len(cont)] = np.arange(len(inp) - len(cont), len(inp))
      targets[r, :len(cont)] = cont
      mask[r, :len(cont)] = True
    return jax.device_get(_score(self.params, tokens, index, targets, mask,
                                 model_cfg=self.model_cfg))

  def _shared_batch(self, group, rows, prefix, distinct):
    """Each distinct prefix once, then every request's suffix on its cache."""
    b = self.batch_size
    u = bucket(len(distinct), 1)
    p = _length_bucket(max(len(x) for x in distinct))
    m = bucket(max(len(rows[i][1]) for i in group), 1)
    prefix_up, prefix_len_u = np.zeros((u, p), np.int32), np.zeros(u, np.int32)
    for j, x in enumerate(distinct):
      prefix_up[j, p - len(x):] = x
      prefix_len_u[j] = len(x)
    slot = {x: j for j, x in enumerate(distinct)}
    owner_b = np.zeros(b, np.int32)
    suffix_bm, targets_bm = np.zeros((b, m), np.int32), np.zeros((b, m), np.int32)
    mask_bm = np.zeros((b, m), bool)
    for r, i in enumerate(group):
      inp, cont = rows[i]
      owner_b[r] = slot[prefix[i]]
      suffix_bm[r, :len(cont)] = inp[len(inp) - len(cont):]
      targets_bm[r, :len(cont)] = cont
      mask_bm[r, :len(cont)] = True
    return jax.device_get(_score_shared(self.params, prefix_up, prefix_len_u, owner_b,
                                        suffix_bm, targets_bm, mask_bm,
                                        model_cfg=self.model_cfg,
                                        chunk=prefill_chunk(u, p, p + m, self.model_cfg)))

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows, owners = [], []
    for r, (string,) in enumerate(req.args for req in requests):
      ids = self.tok_encode(string)
      pairs = list(map(_lm_utils.make_disjoint_window, _lm_utils.get_rolling_token_windows(
          token_list=ids, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
          context_len=1)))
      if len(pairs) > 1:
        self.truncated["loglikelihood_rolling"] += 1   # scored in several windows
      windows += [(None, c, t) for c, t in pairs]
      owners += [r] * len(pairs)
    scores = self._loglikelihood_tokens(windows) if windows else []
    totals = [0.0] * len(requests)
    for r, (logp, _) in zip(owners, scores):
      totals[r] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  # ------------------------------------------------------------ generation

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    args = [req.args for req in requests]
    out: list[str | None] = [None] * len(args)
    groups: dict[str, list[int]] = {}
    for i, (_, gen_kwargs) in enumerate(args):
      if not isinstance(gen_kwargs, dict):
        raise UserError(f"generate_until request {i}: generation kwargs must be a dict, "
                        f"got {gen_kwargs!r}.")
      groups.setdefault(repr(sorted(gen_kwargs.items(), key=str)), []).append(i)
    # A sampled request's seed depends on its own context and how many identical
    # requests came before it (the harness's `repeats`), not on its neighbours.
    seen: dict[str, int] = {}
    seeds = []
    for ctx, gen_kwargs in args:
      key = ctx + "\x00" + repr(sorted(gen_kwargs.items(), key=str))
      seeds.append((self.seed + zlib.crc32(ctx.encode()) + 7919 * seen.get(key, 0)) % (1 << 31))
      seen[key] = seen.get(key, 0) + 1
    eos_text = self.tok.token_text(self.tok.eos_id)
    for members in groups.values():
      kwargs = _model_utils.normalize_gen_kwargs(args[members[0]][1], self.max_gen_toks)
      until = _model_utils.handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
      def done(j, text, members=members):   # each batch as it ends: a harness cache
        out[members[j]] = text               # (--use_cache) keeps it if the run stops
        self.cache_hook.add_partial("generate_until", args[members[j]], text)
      self._generate([seeds[i] for i in members], [args[i][0] for i in members], until,
                     kwargs, done=done)
    return out

  def _generate(self, seeds: Sequence[int], contexts: Sequence[str], until: list[str],
                kwargs: dict, done=None) -> list[str]:
    """Texts for `contexts`; `done(i, text)` is called for each as its batch ends."""
    max_new = int(kwargs.pop("max_gen_toks"))
    keep = self.max_length - max_new
    if keep < 1:
      raise UserError(f"max_gen_toks={max_new} leaves no room for the prompt in the context "
                      f"of {self.max_length}; lower max_gen_toks.")
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 0.0)) if do_sample else 0.0
    top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
    top_k = kwargs.pop("top_k", None)
    top_k = int(top_k) if top_k not in (None, 0, -1) else None
    prompts = []
    for ctx in contexts:
      ids = self.tok_encode(ctx) or [self.prefix_token_id]
      if len(ids) > keep:
        self.truncated["generate_until"] += 1
        ids = ids[-keep:]
      prompts.append(ids)
    stops = [s for s in until if s and s != self.tok.token_text(self.tok.eos_id)]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts: list[str | None] = [None] * len(prompts)
    new_tokens = min(max_new, self.model_cfg.max_seq_len)
    for rows in batching.plan([len(prompts[i]) for i in order], max_new_tokens=new_tokens,
                              max_rows=self.batch_size, token_budget=self.token_budget):
      chunk = [order[j] for j in rows]
      gen = generate(self.model_cfg, self.params, [prompts[i] for i in chunk],
                     max_new_tokens=new_tokens,
                     temperature=temperature, top_p=top_p, top_k=top_k,
                     seed=[seeds[i] for i in chunk],
                     eos_id=self.tok.eos_id, stop_token_ids=self.tok.eos_ids,
                     stop_strings=stops, tokenizer=self.tok, logprobs=False)
      for i, c in zip(chunk, gen.completions):
        texts[i] = _model_utils.postprocess_generated_text(c.text or "", until, None)
        if done is not None:
          done(i, texts[i])
    return texts


def _maps_special_text(tok) -> bool:
  from jaxslm.tokenizers.base import Tokenizer
  return type(tok)._encode_special is not Tokenizer._encode_special
