"""Stops, the calculator hook and streaming, on a model whose outputs the test chooses."""

import numpy as np
import pytest

from jaxslm.sampling import generate
from jaxslm.sampling.stream import TextStream
from scripted import CharTokenizer, bigram_model, chain

TOK = CharTokenizer()


def ids(text):
  return TOK.encode(text)


def test_scripted_model_writes_its_script():
  cfg, params = bigram_model(chain("abcdefg"))
  c = generate(cfg, params, [ids("xa")], max_new_tokens=20, eos_id=0, tokenizer=TOK).completions[0]
  assert c.text == "bcdefg" and c.finish_reason == "eos"
  assert c.tokens == ids("bcdefg") + [0]                       # EOS kept in the tokens, not the text
  assert np.all(c.logprobs > -1e-3)                            # the script is near certain


@pytest.mark.parametrize("chunk", [None, 1, 3, 64])
def test_stop_string_cuts_text_and_tokens_wherever_the_chunks_fall(chunk):
  cfg, params = bigram_model(chain("abcdefghij"))
  out = generate(cfg, params, [ids("a"), ids("xf")], max_new_tokens=30, eos_id=0, tokenizer=TOK,
                 stop_strings=["de", "zz"], chunk_size=chunk).completions
  assert out[0].text == "bc" and out[0].finish_reason == "stop_string"
  assert out[0].tokens == ids("bcde")                          # up to the token completing the stop
  assert out[1].text == "ghij" and out[1].finish_reason == "eos"


def test_stop_string_spanning_prompt_and_output_is_not_a_stop():
  cfg, params = bigram_model(chain("abcd"))
  c = generate(cfg, params, [ids("ab")], max_new_tokens=5, eos_id=0, tokenizer=TOK,
               stop_strings=["bc"]).completions[0]
  assert c.text == "cd" and c.finish_reason == "eos"


def test_max_new_tokens_and_n_completions():
  cfg, params = bigram_model(chain("abcdefghij"))
  out = generate(cfg, params, [ids("a"), ids("c")], max_new_tokens=3, n=2, tokenizer=TOK)
  assert [c.text for c in out.completions] == ["bcd", "bcd", "def", "def"]
  assert [(c.prompt_index, c.sample_index) for c in out.completions] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert {c.finish_reason for c in out.completions} == {"length"}


def test_calculator_hook_writes_the_value_after_expr_equals():
  # The model always "computes" 3*4 as 7; with the calculator the 12 is written for it.
  cfg, params = bigram_model({"4": "=", "=": "7", "7": ">", "2": ">", ">": "\n"})
  kw = dict(max_new_tokens=12, eos_id=0, tokenizer=TOK)
  plain = generate(cfg, params, [ids("x <<3*4")], **kw).completions[0]
  assert plain.text == "=7>\n"
  hooked = generate(cfg, params, [ids("x <<3*4"), ids("no calc 4")], calculator=True, **kw).completions
  assert hooked[0].text == "=12>\n"
  assert hooked[0].forced.tolist() == [False, True, True, False, False, False]
  assert hooked[1].text == "=7>\n" and not hooked[1].forced.any()   # no "<<": left alone


def test_calculator_ignores_what_is_not_arithmetic():
  cfg, params = bigram_model({"o": "=", "=": "7", "7": "\n"})
  c = generate(cfg, params, [ids("<<foo")], max_new_tokens=6, eos_id=0, tokenizer=TOK,
               calculator=True).completions[0]
  assert c.text == "=7\n" and not c.forced.any()


def test_streamed_tokens_add_up_to_the_result():
  cfg, params = bigram_model(chain("abcdefghij"))
  got = {}
  out = generate(cfg, params, [ids("a"), ids("e")], max_new_tokens=30, eos_id=0, tokenizer=TOK,
                 stop_strings=["hi"], chunk_size=2,
                 on_tokens=lambda row, new: got.setdefault(row, []).extend(new))
  assert got[0] == out.completions[0].tokens and got[1] == out.completions[1].tokens


def test_text_stream_holds_back_possible_stop_strings():
  stream = TextStream(TOK, stops=["\nQ:"], skip_ids=[0])
  pieces = [stream.push(ids(c)) for c in "12\n3\nQ"] + [stream.push(ids(":x")), stream.finish()]
  assert "".join(pieces) == "12\n3"
  assert pieces[2] == ""          # "\n" might start "\nQ:": held back
  assert pieces[3] == "\n3"       # then it could not
  stream = TextStream(TOK, stops=["\nQ:"])
  assert stream.push(ids("ab\n")) == "ab" and stream.finish() == "\n"
