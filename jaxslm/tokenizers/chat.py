"""Chat templates: Hugging Face-style Jinja templates rendered in a sandbox.

    text = render_chat_template(template, [{"role": "user", "content": "2+2?"}],
                                bos_token="<s>", eos_token="</s>")

The environment follows what Hugging Face chat templates are written against:
`trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension ({% break %}),
a `tojson` filter that keeps non-ASCII text and does not HTML-escape, and the
globals `raise_exception(message)` and `strftime_now(format)`. Templates run in
Jinja's immutable sandbox: they can read the messages, never change them or
reach Python internals.
"""
from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jaxslm.errors import UserError

_TEXT_CONTENT = (str, list, type(None))  # str, a list of parts (multimodal style) or None


def _raise_exception(message: str):
  import jinja2
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii: bool = False, indent: int | None = None,
            separators=None, sort_keys: bool = False) -> str:
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=1)
def _environment():
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = _tojson
  env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
  return env


@functools.lru_cache(maxsize=16)
def compile_template(template: str):
  """The compiled Jinja template (cached: a model's template is compiled once)."""
  import jinja2

  if not isinstance(template, str):
    raise UserError(f"a chat template must be a Jinja string, got {type(template).__name__}.")
  try:
    return _environment().from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise UserError(f"the chat template is not valid Jinja (line {e.lineno}: {e.message}); "
                    "fix the template in tokenizer_config.json / chat_template.jinja.") from e


def check_messages(messages: Any) -> list[Mapping[str, Any]]:
  """`messages` as a list of {"role": str, "content": ...} mappings, or a UserError."""
  if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
    raise UserError(
        f"chat messages must be a list of {{'role': ..., 'content': ...}} dicts, got a "
        f"{type(messages).__name__}; e.g. [{{'role': 'user', 'content': 'What is 2+2?'}}].")
  if not messages:
    raise UserError("chat messages are empty; give at least one message, e.g. "
                    "[{'role': 'user', 'content': 'What is 2+2?'}].")
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping):
      raise UserError(f"chat message {i} is a {type(m).__name__}; expected a dict with "
                      "'role' and 'content'.")
    if not isinstance(m.get("role"), str):
      raise UserError(f"chat message {i} has role={m.get('role')!r}; expected a string such "
                      "as 'system', 'user' or 'assistant'.")
    if not isinstance(m.get("content"), _TEXT_CONTENT):
      raise UserError(f"chat message {i} has content of type {type(m['content']).__name__}; "
                      "expected a string.")
  return list(messages)


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], *,
                         add_generation_prompt: bool = True, **variables: Any) -> str:
  """`template` rendered for `messages`; `variables` (bos_token, eos_token, tools,
  ...) are visible to the template. A template's `raise_exception` (e.g. roles
  not alternating) becomes a UserError carrying its message."""
  import jinja2

  compiled = compile_template(template)
  context = {**variables, "messages": check_messages(messages),
             "add_generation_prompt": bool(add_generation_prompt)}
  try:
    return compiled.render(**context)
  except jinja2.TemplateError as e:
    raise UserError(f"the chat template rejected these messages: {e}") from e
