"""Chat templates (jaxslm.tokenizers.chat) and `jaxslm.sample(..., chat=True)`.

A tiny byte-level BPE with ChatML special tokens is trained here, and a ChatML
template written here is rendered by jaxslm and by transformers' tokenizer.
"""
from __future__ import annotations

import json

import jax
import pytest

import jaxslm
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig, init_params
from jaxslm.tokenizers import HFTokenizer, from_spec, get_tokenizer, render_chat_template
from scripted import CharTokenizer, bigram_model

transformers = pytest.importorskip("transformers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ENDOFTEXT, IM_START, IM_END = 0, 1, 2
# Block tags on their own (indented) lines: the output is right only with
# trim_blocks and lstrip_blocks, as Hugging Face renders templates.
CHATML = """\
{% if messages[0]['role'] != 'system' %}
<|im_start|>system
You are a careful math tutor.<|im_end|>
{% endif %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}{{ eos_token }}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""
TEXTS = ["Natalia sold 48 clips in April and half as many in May.",
         "What is 2 + 2? The answer is 4.", "You are a careful math tutor.",
         "system user assistant"] * 5
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Natalia sold 48 clips."},
     {"role": "assistant", "content": "  She sold 48.  "},
     {"role": "user", "content": "And in May? π ≈ 3.14, 日本 😀\n\n"}],
]


def _bpe():
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
      vocab_size=320, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tok


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  """A tokenizer directory as the Hub has them, with two EOS ids (Llama 3 style)."""
  d = tmp_path_factory.mktemp("chatml")
  _bpe().save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
       "chat_template": CHATML}))
  (d / "config.json").write_text(json.dumps({"eos_token_id": [IM_END, ENDOFTEXT]}))
  return d


@pytest.fixture(scope="module")
def ours(tok_dir):
  return get_tokenizer(str(tok_dir))


@pytest.fixture(scope="module")
def theirs(tok_dir):
  return transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(tok_dir / "tokenizer.json"), eos_token="<|im_end|>",
      chat_template=CHATML)


def _ids(encoded):
  """transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)."""
  return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_prompt_matches_transformers(ours, theirs, messages):
  text = ours.render_chat(messages)
  assert text == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert text.endswith("<|im_start|>assistant\n") and "{%" not in text
  ids = ours.encode_chat(messages)
  assert ids == _ids(theirs.apply_chat_template(messages, tokenize=True,
                                                add_generation_prompt=True))
  assert ids.count(IM_START) == text.count("<|im_start|>") >= 2  # special ids, not text
  assert ours.decode(ids) == text
  closed = ours.render_chat(messages, add_generation_prompt=False)
  assert closed == theirs.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=False)


def test_special_text_is_plain_unless_allowed(ours):
  plain = ours.encode("<|im_start|>user")
  assert IM_START not in plain and ours.decode(plain) == "<|im_start|>user"
  assert ours.encode("<|im_start|>user", allow_special=True)[0] == IM_START
  assert ours.encode_batch(["<|im_end|>"], allow_special=True) == [[IM_END]]
  assert ours.encode("<|im_start|>user") == plain  # the flag did not leak into later calls


def test_eos_ids_from_dir_and_spec(ours, tok_dir):
  assert (ours.eos_id, ours.extra_eos_ids, ours.eos_ids) == (IM_END, (ENDOFTEXT,),
                                                             (IM_END, ENDOFTEXT))
  spec = json.loads(json.dumps(ours.spec()))
  rebuilt = from_spec(spec)
  assert rebuilt.eos_ids == ours.eos_ids and rebuilt.chat_template == CHATML
  assert rebuilt.encode_chat(CONVERSATIONS[1]) == ours.encode_chat(CONVERSATIONS[1])
  old = {k: v for k, v in spec.items() if k not in ("extra_eos_ids", "chat_template")}
  legacy = from_spec(old)  # a spec written before these keys existed
  assert legacy.eos_ids == (IM_END,) and legacy.chat_template is None
  gen_dir = tok_dir.parent / "gen"
  gen_dir.mkdir()
  for f in ("tokenizer.json", "tokenizer_config.json"):
    (gen_dir / f).write_text((tok_dir / f).read_text())
  (gen_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [ENDOFTEXT]}))
  assert get_tokenizer(str(gen_dir)).eos_ids == (IM_END, ENDOFTEXT)
  (gen_dir / "tokenizer_config.json").write_text(json.dumps(  # named templates, as some repos
      {"eos_token": "<|im_end|>", "chat_template": [{"name": "tool_use", "template": "x"},
                                                    {"name": "default", "template": CHATML}]}))
  assert get_tokenizer(str(gen_dir)).chat_template == CHATML
  with pytest.raises(UserError, match="extra_eos_ids=999"):
    HFTokenizer(_bpe().to_str(), eos_id=IM_END, extra_eos_ids=[999])


def test_no_chat_template_is_a_user_error(ours):
  plain = HFTokenizer(_bpe().to_str(), eos_id=ENDOFTEXT, name="plain")
  with pytest.raises(UserError, match="'plain' has no chat template"):
    plain.encode_chat(CONVERSATIONS[0])
  cfg = ModelConfig.preset("tiny", vocab_size=plain.vocab_size, dtype="float32")
  with pytest.raises(UserError, match="no chat template"):  # before any params are touched
    jaxslm.sample((cfg, None, plain), CONVERSATIONS[0], chat=True, max_new_tokens=2)


def test_template_and_message_errors(ours):
  with pytest.raises(UserError, match="Unknown role: tool"):
    ours.render_chat([{"role": "tool", "content": "4"}])
  with pytest.raises(UserError, match="not valid Jinja"):
    render_chat_template("{% for m in messages %}", CONVERSATIONS[0])
  for bad, match in (("hi", "list of"), ([], "empty"), ([{"content": "x"}], "role=None"),
                     ([{"role": "user", "content": 3}], "content of type int"),
                     ([["user", "hi"]], "message 0 is a list")):
    with pytest.raises(UserError, match=match):
      ours.render_chat(bad)


def test_templates_run_sandboxed(ours):
  for evil in ("{{ messages.append(1) }}", "{{ ''.__class__.__mro__ }}",
               "{{ messages[0].clear() }}"):
    with pytest.raises(UserError, match="rejected"):
      render_chat_template(evil, CONVERSATIONS[0])
  text = render_chat_template("{{ bos_token }}{{ messages | tojson }}|{% for m in messages %}"
                              "{% break %}{% endfor %}", [{"role": "user", "content": "π<a>"}],
                              bos_token="<s>")
  assert text == '<s>[{"role": "user", "content": "π<a>"}]|'


def test_sample_chat_passes_template_ids_and_every_eos(ours, monkeypatch):
  cfg = ModelConfig.preset("tiny", vocab_size=ours.vocab_size, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(1))
  seen = []
  real = jaxslm.api.generate

  def spy(*args, **kw):
    seen.append((args[2], kw))
    return real(*args, **kw)

  monkeypatch.setattr(jaxslm.api, "generate", spy)
  one = jaxslm.sample((cfg, params, ours), CONVERSATIONS[0], chat=True, max_new_tokens=4)
  assert isinstance(one, str)
  prompts, kw = seen[-1]
  assert prompts == [ours.encode_chat(CONVERSATIONS[0])]
  assert kw["eos_id"] == IM_END and list(kw["stop_token_ids"]) == [ENDOFTEXT]
  two = jaxslm.sample((cfg, params, ours), CONVERSATIONS, chat=True, max_new_tokens=4,
                      stop_token_ids=[7])
  assert isinstance(two, list) and len(two) == 2
  prompts, kw = seen[-1]
  assert prompts == [ours.encode_chat(c) for c in CONVERSATIONS]
  assert sorted(kw["stop_token_ids"]) == [ENDOFTEXT, 7]
  jaxslm.sample((cfg, params, ours), "What is 2 + 2?", chat=True, max_new_tokens=2)
  assert seen[-1][0] == [ours.encode_chat([{"role": "user", "content": "What is 2 + 2?"}])]
  jaxslm.sample((cfg, params, ours), "2 + 2 =", max_new_tokens=2, stop_at_eos=False)
  assert seen[-1][1]["eos_id"] is None and list(seen[-1][1]["stop_token_ids"]) == []
  with pytest.raises(UserError, match="pass chat=True"):
    jaxslm.sample((cfg, params, ours), CONVERSATIONS, max_new_tokens=2)


class ChatChars(CharTokenizer):
  """Characters, EOS "\\0" and a second EOS "#", with a one-line chat template."""
  extra_eos_ids = (ord("#"),)
  chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"

  def _encode_special(self, text):
    return self._encode(text)


def test_sample_chat_stops_on_the_second_eos_id():
  cfg, params = bigram_model({"]": "4", "4": "2", "2": "#", "#": "x", "x": "y"})
  model = (cfg, params, ChatChars())
  out = jaxslm.sample(model, [{"role": "user", "content": "2+2?"}], chat=True,
                      max_new_tokens=8, return_result=True)
  assert out.prompt_tokens[0] == [ord(c) for c in "[2+2?]"]
  assert (out.completions[0].text, out.completions[0].finish_reason) == ("42", "stop_token")
  assert jaxslm.sample(model, "2+2?", chat=True, max_new_tokens=5,
                       stop_at_eos=False) == "42#xy"
