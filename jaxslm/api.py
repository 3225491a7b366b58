"""`jaxslm.sample`: text in, text out, for notebooks.

    import jaxslm
    jaxslm.sample("runs/default", "Question: Ava has 3 boxes of 12 pens. ...\\nAnswer:")
    jaxslm.sample(model, ["Q1", "Q2"], max_new_tokens=128, temperature=0.8, top_p=0.95, n=4)
    result = jaxslm.sample(model, "...", return_result=True)   # tokens, log-probs, reasons
    result.texts_by_prompt[0][0]                                # nested like the default return
    jaxslm.sample(model, [{"role": "user", "content": "What is 2+2?"}], chat=True)

With `chat=True` the prompt is one conversation (a list of {"role", "content"}
dicts), a list of conversations, a str (one user message) or a list of str; the
tokenizer's chat template renders it with the generation prompt appended, and
special-token text in the rendered template ("<|im_start|>") becomes special ids.
Generation stops at any of the tokenizer's EOS ids (`tokenizer.eos_ids`).

BOS: `add_bos=None` (the default) starts a text prompt with BOS where the
model's tokenizer says so (`tokenizer.add_bos_default`: True for models
converted from Llama 3, Gemma or Mistral, whose Hugging Face tokenizers prepend
it; False for GPT-2, Qwen, Phi-2 and models trained by jaxslm). A chat prompt
gets BOS from its template, never twice; `add_bos=True` / False force it.

`model` is a checkpoint path (loaded once and kept: later calls with the same
path reuse it), the `Loaded` that `jaxslm.load` returns, or a tuple
(model_cfg, params, tokenizer). Compiled functions are cached by JAX across
calls, keyed by the bucketed shapes (batch, prompt length and token budget,
each rounded up to a power of two), `n` and the kind of sampling: a new
prompt length within its power of two reuses the compiled code.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

from jaxslm.errors import UserError
from jaxslm.loading import Loaded, load
from jaxslm.sampling.generate import Generation, generate

_LOADED: dict[str, Loaded] = {}
_LOCK = threading.Lock()


def resolve_model(model) -> Loaded:
  """A `Loaded` from a path (cached by its resolved step directory), a
  `Loaded`, or a (model_cfg, params, tokenizer) tuple."""
  if isinstance(model, Loaded):
    return model
  if isinstance(model, (str, os.PathLike)):
    from jaxslm.checkpoint import resolve_step_dir
    step_dir = resolve_step_dir(os.fspath(model))
    with _LOCK:
      if step_dir not in _LOADED:
        _LOADED[step_dir] = load(step_dir)
      return _LOADED[step_dir]
  if isinstance(model, (tuple, list)) and len(model) == 3:
    cfg, params, tok = model
    return Loaded(cfg, params, tok, {}, "")
  raise UserError(f"model={type(model).__name__}: expected a checkpoint path, the result of "
                  "jaxslm.load(path), or a (model_cfg, params, tokenizer) tuple.")


def sample(model, prompt: str | Sequence, *, max_new_tokens: int = 128,
           temperature=0.0, top_k: int | None = None, top_p: float = 1.0, min_p: float = 0.0,
           n: int = 1, seed=0, stop: str | Sequence[str] | None = None,
           stop_at_eos: bool = True, calculator: bool = False, truncate: bool = False,
           add_bos: bool | None = None, chat: bool = False, return_result: bool = False,
           **kwargs):
  """Continue `prompt` (a str or a list of str), or with `chat=True` answer a
  conversation (a list of {"role", "content"} dicts) or a list of them.

  Returns a str for one prompt, a list of str for a list of prompts; with
  n > 1 each prompt's entry is a list of its n completions. Stop strings
  (`stop`) are removed from the text. `return_result=True` returns the whole
  `jaxslm.sampling.Generation` instead (token ids, log-probabilities, finish
  reasons, timing): its `texts_by_prompt[i][j]` is prompt i's completion j
  (always nested; the default return is this with the levels of size one
  dropped as above), and `texts` the same texts flat, prompt-major
  (texts[i * n + j]). Other keywords go to `jaxslm.sampling.generate`.

  Budget: a prompt of L tokens gets min(max_new_tokens, context - L) new
  tokens (finish reason "context" when it runs out). A prompt that fills the
  context raises; `truncate=True` keeps the last tokens of a prompt that leaves
  fewer than 16 (`min_budget`) and warns.
  `stop_at_eos` stops at every EOS id of the tokenizer (`tok.eos_ids`; the
  extra ones finish with reason "stop_token"). With `chat=True` a str is one
  user message; a tokenizer without a chat template raises a UserError.
  """
  loaded = resolve_model(model)
  tok = loaded.tokenizer
  single, ids = (_chat_ids(tok, prompt, bool(add_bos)) if chat   # templates write BOS
                 else _text_ids(tok, prompt, tok.resolve_add_bos(add_bos)))
  stops = [stop] if isinstance(stop, str) else list(stop or ())
  stop_ids = list(kwargs.pop("stop_token_ids", ()))
  if stop_at_eos:
    stop_ids += [i for i in getattr(tok, "eos_ids", ()) if i != tok.eos_id]
  out: Generation = generate(
      loaded.model_cfg, loaded.params, ids, max_new_tokens=max_new_tokens,
      temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, n=n, seed=seed,
      eos_id=tok.eos_id if stop_at_eos else None, stop_token_ids=stop_ids, stop_strings=stops,
      tokenizer=tok, calculator=calculator, truncate=truncate, pad_id=tok.pad_id, **kwargs)
  if return_result:
    return out
  texts = out.texts_by_prompt
  if n == 1:
    texts = [t[0] for t in texts]
  return texts[0] if single else texts


def _text_ids(tok, prompt, add_bos: bool) -> tuple[bool, list[list[int]]]:
  single = isinstance(prompt, str)
  prompts = [prompt] if single else list(prompt)
  if not prompts:
    raise UserError("sample: got an empty list of prompts; pass at least one prompt string.")
  for i, p in enumerate(prompts):
    if not isinstance(p, str):
      hint = (" (a list of chat messages? pass chat=True)"
              if isinstance(p, (Mapping, list, tuple)) else "")
      raise UserError(f"sample: prompt {i} is a {type(p).__name__}; expected a str{hint}.")
    if not p and not add_bos:
      raise UserError(f"sample: prompt {i} is empty; give some text to continue "
                      "(or add_bos=True to start from the BOS token).")
  return single, [tok.encode(p, add_bos=add_bos) for p in prompts]


def _chat_ids(tok, prompt, add_bos: bool) -> tuple[bool, list[list[int]]]:
  """One conversation (a list of message dicts, or a str: one user message) or a
  list of them -> (single, token ids of each rendered conversation)."""
  as_chat = lambda c: [{"role": "user", "content": c}] if isinstance(c, str) else c
  if isinstance(prompt, str):
    single, chats = True, [as_chat(prompt)]
  elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
    single, chats = True, [prompt]
  elif isinstance(prompt, Sequence) and not isinstance(prompt, Mapping):
    single, chats = False, [as_chat(c) for c in prompt]
  else:
    raise UserError(f"sample(chat=True): prompt is a {type(prompt).__name__}; expected a list "
                    "of {'role': ..., 'content': ...} dicts or a list of such lists.")
  if not chats:
    raise UserError("sample(chat=True): got an empty list of conversations; pass at least one.")
  return single, [tok.encode_chat(c, add_bos=add_bos) for c in chats]
