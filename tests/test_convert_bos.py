"""BOS before prompts of converted models, as transformers decides it: a Llama 3
tokenizer.json whose post-processor writes BOS, a Gemma-style tokenizer (with
add_bos_token true) and a SentencePiece tokenizer.model alone, against GPT-2 and
Qwen ones that add nothing. Tokens, greedy generation and the jax2hf round trip
are compared with transformers (tiny random models, no downloads)."""

from __future__ import annotations

import json
import os
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
hf_tokenizers = pytest.importorskip("tokenizers")

import jaxslm  # noqa: E402
from jaxslm import convert, tokenizers  # noqa: E402
from jaxslm.errors import UserError  # noqa: E402
from jaxslm.tokenizers import hf_bos  # noqa: E402
from test_convert import GEMMA3_SHAPE, LLAMA_SHAPE  # noqa: E402

TRAIN = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many.",
         "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes.",
         "Betty is saving money for a new wallet which costs $100.\n#### 5"] * 8
PROMPTS = ["Natalia sold 12 clips", "Weng earns $50 an hour", "x"]
ENDS = {"gpt2": ["<|endoftext|>"], "llama3": ["<|end_of_text|>", "<|begin_of_text|>"],
        "gemma": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]}


def _byte_bpe(specials, post=None, pre=None):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre or pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TRAIN, trainers.BpeTrainer(
      vocab_size=300, special_tokens=specials, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if post is not None:
    tok.post_processor = post(tok)
  return tok


def _bos_template(bos):
  from tokenizers import processors
  return lambda tok: processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
      special_tokens=[(bos, tok.token_to_id(bos))])


def _llama3():
  """Llama 3: ByteLevel then a TemplateProcessing writing <|begin_of_text|>."""
  from tokenizers import processors
  bos = "<|begin_of_text|>"
  tok = _byte_bpe(ENDS["llama3"], lambda t: processors.Sequence(
      [processors.ByteLevel(trim_offsets=False), _bos_template(bos)(t)]))
  return tok, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos,
               "eos_token": "<|end_of_text|>"}


def _gemma():
  """Gemma: SentencePiece-style BPE with byte fallback, <bos> written by the
  post-processor, add_bos_token true; transformers' GemmaTokenizer class."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
  tok.normalizer = normalizers.Replace(" ", "▁")
  tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse()])
  specials = ENDS["gemma"] + [f"<0x{i:02X}>" for i in range(256)]
  words = [w for t in TRAIN for w in t.split(" ")]
  tok.train_from_iterator(words, trainers.BpeTrainer(vocab_size=340, special_tokens=specials,
                                                     show_progress=False))
  tok.post_processor = _bos_template("<bos>")(tok)
  return tok, {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
               "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True}


def _gpt2():
  return _byte_bpe(ENDS["gpt2"]), {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
                                   "eos_token": "<|endoftext|>"}


def _qwen():
  """Qwen: NFC, its pre-tokenizer regex (digits one by one), a ByteLevel
  post-processor; no BOS. (transformers' Qwen2Tokenizer builds this pipeline
  itself, whatever tokenizer.json says, as real Qwen files say the same.)"""
  from tokenizers import Regex, normalizers, pre_tokenizers, processors
  from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
  tok = _byte_bpe(ENDS["gpt2"], lambda t: processors.ByteLevel(trim_offsets=False),
                  pre=pre_tokenizers.Sequence([
                      pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
  tok.normalizer = normalizers.NFC()
  return tok, {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None,
               "eos_token": "<|endoftext|>"}


def _write_tokenizer(d, tok, tcfg):
  os.makedirs(d, exist_ok=True)
  tok.save(os.path.join(d, "tokenizer.json"))
  with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
    json.dump(tcfg, f)
  return d


def _write_sentencepiece(d):
  """A SentencePiece tokenizer.model alone (older Gemma / Llama 2 repositories)."""
  os.makedirs(d, exist_ok=True)
  tokenizers.train_sentencepiece(TRAIN, vocab_size=320).save(os.path.join(d, "tokenizer.model"))
  with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "GemmaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True}, f)
  return d


def _model(family, vocab, root):
  n = dict(vocab_size=vocab, bos_token_id=None, eos_token_id=None, pad_token_id=None)
  config = {
      "llama": lambda: transformers.LlamaConfig(**{**LLAMA_SHAPE, **n}, tie_word_embeddings=False),
      "gemma3": lambda: transformers.Gemma3TextConfig(**GEMMA3_SHAPE, **n),
      "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **n),
      "qwen2": lambda: transformers.Qwen2Config(**{**LLAMA_SHAPE, **n}, tie_word_embeddings=True),
  }[family]()
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.generation_config.eos_token_id = None
  d = str(root / "hf")
  model.save_pretrained(d)
  return model, d


CASES = {   # name: (model family, tokenizer writer, BOS expected)
    "llama3": ("llama", lambda d: _write_tokenizer(d, *_llama3()), True),
    "gemma": ("gemma3", lambda d: _write_tokenizer(d, *_gemma()), True),
    "sentencepiece": ("gemma3", _write_sentencepiece, True),
    "gpt2": ("gpt2", lambda d: _write_tokenizer(d, *_gpt2()), False),
    "qwen2": ("qwen2", lambda d: _write_tokenizer(d, *_qwen()), False),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
  family, write, expected = CASES[request.param]
  root = tmp_path_factory.mktemp(request.param)
  tok_dir = write(str(root / "tok"))
  vocab = len(transformers.AutoTokenizer.from_pretrained(tok_dir))
  model, hf_dir = _model(family, vocab, root)
  write(hf_dir)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)   # tokenizer.model without tokenizer.json
    out = convert.hf_to_jaxslm(hf_dir, str(root / "jax"))
  return dict(name=request.param, model=model, hf_dir=hf_dir, ckpt=out, root=root,
              expected=expected, loaded=jaxslm.load(out),
              hf_tok=transformers.AutoTokenizer.from_pretrained(hf_dir))


def test_default_is_what_transformers_adds(case):
  tok = case["loaded"].tokenizer
  assert tok.add_bos_default is case["expected"], case["name"]
  for text in PROMPTS:
    theirs = case["hf_tok"](text)["input_ids"]
    assert tok.encode(text, add_bos=tok.add_bos_default) == theirs, (case["name"], text)
    assert tok.encode(text, add_bos=None) == theirs
    assert (theirs[0] == tok.bos_id) is case["expected"]


def test_sample_matches_generate_on_tokenizer_input(case):
  text = PROMPTS[0]
  ids = case["hf_tok"](text)["input_ids"]
  with torch.no_grad():
    hf = case["model"].generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8,
                                do_sample=False, pad_token_id=0)
  out = jaxslm.sample(case["loaded"], text, max_new_tokens=8, stop_at_eos=False,
                      return_result=True)
  assert out.completions[0].tokens == hf[0, len(ids):].tolist(), case["name"]


def test_default_survives_jax2hf_round_trip(case):
  out = convert.jaxslm_to_hf(case["ckpt"], str(case["root"] / "export"))
  back = transformers.AutoTokenizer.from_pretrained(out)
  for text in PROMPTS:
    assert back(text)["input_ids"] == case["hf_tok"](text)["input_ids"], (case["name"], text)
  again = convert.hf_to_jaxslm(out, str(case["root"] / "again"))
  assert jaxslm.load(again).tokenizer.add_bos_default is case["expected"]


def test_lm_eval_backend_default_follows_the_tokenizer(case):
  pytest.importorskip("lm_eval")
  from jaxslm.evaluation.lm_eval_backend import JaxslmLM
  lm = JaxslmLM(model=case["loaded"])
  assert lm.add_bos_token is case["expected"]
  assert JaxslmLM(model=case["loaded"], add_bos_token="false").add_bos_token is False
  if case["name"] != "sentencepiece":   # tok_encode maps special-token text: tokenizer.json
    assert lm.tok_encode(PROMPTS[1]) == case["hf_tok"](PROMPTS[1])["input_ids"]


# ------------------------------------------------------- transformers' rules


def _decide(tmp_path, tok, tcfg, model_config=None):
  d = _write_tokenizer(str(tmp_path), tok, tcfg)
  if model_config is not None:
    model_config.save_pretrained(d)
  theirs = transformers.AutoTokenizer.from_pretrained(d)(PROMPTS[1])["input_ids"]
  ours = tokenizers.HFTokenizer.from_dir(d)
  return ours.add_bos_default, theirs[0] == ours.bos_id


@pytest.mark.parametrize("kind", ["phi3", "no_post_processor", "gpt_neox", "code_llama",
                                  "gpt_neox_model_type"])
def test_flag_beside_tokenizer_json_decided_as_transformers(kind, tmp_path):
  """transformers drops add_bos_token beside a tokenizer.json: its post-processor
  decides (Phi-3 style: flag false, template with BOS -> BOS; no post-processor,
  flag true -> none), except for classes that rebuild it (GPT-NeoX, CodeLlama),
  named by tokenizer_config.json or, without a name there, by config.json's model type."""
  cfg = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
  tok, tcfg = {
      "phi3": lambda: (_byte_bpe(ENDS["gemma"], _bos_template("<bos>")),
                       {**cfg, "tokenizer_class": "LlamaTokenizer", "add_bos_token": False}),
      "no_post_processor": lambda: (_byte_bpe(ENDS["gemma"]),
                                    {**cfg, "tokenizer_class": "PreTrainedTokenizerFast",
                                     "add_bos_token": True}),
      "gpt_neox": lambda: (_byte_bpe(ENDS["gemma"], _bos_template("<bos>")),
                           {**cfg, "tokenizer_class": "GPTNeoXTokenizer"}),
      "code_llama": lambda: (_byte_bpe(ENDS["gemma"]),
                             {**cfg, "tokenizer_class": "CodeLlamaTokenizer"}),
      "gpt_neox_model_type": lambda: (_byte_bpe(ENDS["gemma"], _bos_template("<bos>")), cfg),
  }[kind]()
  model_config = transformers.GPTNeoXConfig() if kind == "gpt_neox_model_type" else None
  ours, theirs = _decide(tmp_path, tok, tcfg, model_config)
  assert ours is (kind in ("phi3", "code_llama")), kind
  assert ours is theirs, kind
  exported = tokenizers.HFTokenizer.from_dir(str(tmp_path))
  exported.save(str(tmp_path))   # as jax2hf writes it: PreTrainedTokenizerFast
  back = transformers.AutoTokenizer.from_pretrained(str(tmp_path))(PROMPTS[1])["input_ids"]
  assert back == exported.encode(PROMPTS[1], add_bos=None)


def test_post_processor_rewritten_both_ways():
  tok, _ = _llama3()
  text = tok.to_str()
  bos = tok.token_to_id("<|begin_of_text|>")
  assert hf_bos.post_processor_adds_bos(text, bos)
  off = hf_bos.with_bos(text, "<|begin_of_text|>", bos, False)
  assert not hf_bos.post_processor_adds_bos(off, bos)
  assert json.loads(off)["post_processor"]["processors"][0]["type"] == "ByteLevel"
  on = hf_bos.with_bos(off, "<|begin_of_text|>", bos, True)
  assert hf_bos.post_processor_adds_bos(on, bos)
  assert hf_bos.with_bos(text, "<|begin_of_text|>", bos, True) == text   # already so: as is


def test_other_prefix_than_bos_warns(tmp_path):
  tok, tcfg = _llama3()
  d = _write_tokenizer(str(tmp_path), tok, {**tcfg, "bos_token": "<|end_of_text|>"})
  with pytest.warns(UserWarning, match="post-processor writes ids"):
    assert tokenizers.HFTokenizer.from_dir(d).add_bos_default is False


# ------------------------------------------------------- defaults and chat


def test_jaxslm_tokenizers_and_old_specs_default_to_false():
  sp = tokenizers.train_sentencepiece(TRAIN, vocab_size=320)
  assert sp.add_bos_default is False and "add_bos_default" not in sp.spec()
  assert tokenizers.from_spec(sp.spec()).add_bos_default is False
  assert sp.encode("a", add_bos=None) == sp.encode("a")
  tok, _ = _llama3()
  bos = tok.token_to_id("<|begin_of_text|>")
  hf = tokenizers.HFTokenizer(tok.to_str(), eos_id=0, bos_id=bos)   # built directly: False
  assert hf.add_bos_default is False
  old = {k: v for k, v in hf.spec().items() if k != "add_bos_default"}   # a pre-flag checkpoint
  assert tokenizers.from_spec(old).add_bos_default is False
  on = tokenizers.HFTokenizer(tok.to_str(), eos_id=0, bos_id=bos, add_bos_default=True)
  assert tokenizers.from_spec(json.loads(json.dumps(on.spec()))).add_bos_default is True
  with pytest.raises(UserError, match="add_bos_default=True but .* has no BOS"):
    tokenizers.HFTokenizer(tok.to_str(), eos_id=0, add_bos_default=True)


def test_chat_template_bos_is_not_doubled():
  from jaxslm.api import _chat_ids
  tok, _ = _gemma()
  template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
  ours = tokenizers.HFTokenizer(tok.to_str(), eos_id=1, bos_id=2, chat_template=template,
                                add_bos_default=True)
  messages = [{"role": "user", "content": "Weng earns"}]
  ids = ours.encode_chat(messages)
  assert ids[0] == 2 and ids[1] != 2
  assert ours.encode_chat(messages, add_bos=True) == ids
  for add_bos in (None, True):
    assert _chat_ids(ours, messages, bool(add_bos))[1] == [ids]
  assert ours.encode("Weng", add_bos=None)[:2] == [2, *ours.encode("Weng")[:1]]


def test_prompt_encoders_follow_the_default():
  from jaxslm.data import sft
  from jaxslm.train import grpo_data
  tok, _ = _llama3()
  bos = tok.token_to_id("<|begin_of_text|>")
  on = tokenizers.HFTokenizer(tok.to_str(), eos_id=0, bos_id=bos, add_bos_default=True)
  off = tokenizers.HFTokenizer(tok.to_str(), eos_id=0, bos_id=bos)
  for t, first in ((on, [bos]), (off, [])):
    enc, _ = sft.encode([sft.SFTExample("Q: 2+2?", " 4")], t, max_len=64)
    assert enc[0][0].tolist() == first + t.encode("Q: 2+2?") + t.encode(" 4", add_eos=True)

    class Template:
      prompt = staticmethod(lambda q: f"Q: {q}")
    pool = grpo_data.encode_pool([("2+2?", "4")], t, Template(), budget=64, too_long="refuse",
                                 source="test")
    assert pool.ids[0] == first + t.encode("Q: 2+2?")
  assert sft.encode([sft.SFTExample("Q", " 4")], on, max_len=64,
                    add_bos=False)[0][0][0][0] != bos


def test_launcher_docstring_lists_every_model_type():
  import ast
  path = os.path.join(os.path.dirname(__file__), "..", "launch", "convert.py")
  with open(path) as f:
    doc = ast.get_docstring(ast.parse(f.read()))
  for model_type in convert.supported_model_types():
    assert model_type in doc, model_type


def test_pretraining_with_a_bos_tokenizer_trains_prompts_without_bos(tmp_path):
  """Pretraining never puts BOS before a document, so the tokenizer it saves
  must not make prompts start with one."""
  from jaxslm.config import base_config
  from jaxslm.train.pretrain import build_tokenizer
  tok, tcfg = _llama3()
  d = _write_tokenizer(str(tmp_path / "tok"), tok, tcfg)
  from jaxslm.tokenizers import get_tokenizer
  assert get_tokenizer(d).add_bos_default
  c = base_config()
  c.tokenizer.name = d
  built = build_tokenizer(c)
  assert not built.add_bos_default
  assert built.encode("Hi", add_bos=None) == built.encode("Hi")
