"""jaxslm.data.sft: examples, loss masks, packing, batches, instruction data, the loss."""

import json
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm.data import sft
from jaxslm.data.gsm8k import Example
from jaxslm.data.templates import get_template
from jaxslm.errors import ResourceUnavailable, UserError
from jaxslm.evaluation import extract
from jaxslm.tools import calculate
from tests.scripted import CharTokenizer

TOK = CharTokenizer()  # id = code point, EOS = pad = 0
PENS = Example(0, "Ann has 3 boxes of 4 pens and buys 1 more. How many pens?",
               "She has 3*4=<<3*4=12>>12 pens.\nThen 12+1=<<12+1=13>>13.\n#### 13", "13")


def ords(text):
  return [ord(c) for c in text]


# ---------------------------------------------------------------- examples and masks


def test_encode_masks_exactly_the_target_and_eos():
  ((ids, mask),), n = sft.encode([sft.SFTExample("Q: 2+2?\nA:", " 4")], TOK, max_len=64)
  assert ids.dtype == np.int32 and mask.dtype == np.bool_ and n == 0
  assert ids.tolist() == ords("Q: 2+2?\nA:") + ords(" 4") + [TOK.eos_id]
  assert mask.tolist() == [False] * 10 + [True, True, True]
  ((ids, mask),), _ = sft.encode([sft.SFTExample("Q:", " 4")], TOK, max_len=64, add_eos=False)
  assert ids.tolist() == ords("Q: 4") and mask.tolist() == [False, False, True, True]
  ((ids, mask),), _ = sft.encode([sft.SFTExample("Q:", " 4")], TOK, max_len=64,
                                mask_prompt=False)
  assert mask.tolist() == [False, True, True, True, True]   # nothing predicts token 0
  ((ids, mask),), _ = sft.encode([sft.SFTExample("", "4")], TOK, max_len=64)
  assert ids.tolist() == [ord("4"), 0] and mask.tolist() == [False, True]


class PairTokenizer(CharTokenizer):
  """Characters, except that "ab" is one token (1000): edges can fall inside a token."""
  vocab_size = 1001

  def _encode(self, text):
    out, i = [], 0
    while i < len(text):
      if text.startswith("ab", i):
        out, i = out + [1000], i + 2
      else:
        out, i = out + [ord(text[i])], i + 1
    return out

  def _decode(self, ids):
    return "".join("ab" if i == 1000 else chr(i) for i in ids if i)


def test_given_spans_are_read_not_learned():
  target = " 3*4\nObservation: 12\nThought: done"
  start = target.index(" 12")
  e = sft.SFTExample("Q:", target, given=((start, target.index("done")),))
  enc, _ = sft.encode([e], TOK, max_len=64)
  ids, mask = enc[0]
  assert ids.tolist() == ords("Q:" + target) + [0]        # encoded as one text
  learned = "".join(chr(i) if i else "<eos>" for i, m in zip(ids, mask) if m)
  assert learned == " 3*4\nObservation:done<eos>"
  assert enc.given_tokens == len(" 12\nThought: ")
  assert "13 target tokens given, not learned" in enc.describe()
  # An edge inside a token moves outwards: "ab" holds given text, so it is not learned.
  for given, want in (((2, 3), "xy"), ((1, 2), "xy"), ((0, 1), "aby"), ((3, 4), "xab")):
    ((ids, mask),), _ = sft.encode([sft.SFTExample("Q:", "xaby", given=(given,))],
                                   PairTokenizer(), max_len=64, add_eos=False)
    assert ids.tolist() == ords("Q:x") + [1000, ord("y")]
    assert PairTokenizer().decode([i for i, m in zip(ids, mask) if m]) == want, given


@pytest.mark.parametrize("given", [((3, 2),), ((0, 99),), ((2, 4), (3, 5)), ((-1, 2),),
                                   ((0.5, 2),), ((1,),)])
def test_bad_given_spans_are_refused(given):
  with pytest.raises(UserError, match="given span"):
    sft.encode([sft.SFTExample("Q:", " 12345", given=given)], TOK, max_len=64)


def test_too_long_examples_are_dropped_and_counted_or_truncated():
  examples = [sft.SFTExample("Q:", " 1"), sft.SFTExample("Q:", " 12345"),
              sft.SFTExample("Question:", " 7")]
  enc, dropped = sft.encode(examples, TOK, max_len=6)   # lengths 5, 9, 12
  assert len(enc) == 1 and dropped == 2 and enc.dropped == [1, 2] and enc.truncated == []
  assert "2 dropped as longer than max_len=6" in enc.describe()
  enc, dropped = sft.encode(examples, TOK, max_len=6, truncate=True)
  # example 2 is still dropped: its prompt alone fills max_len
  assert enc.truncated == [1] and enc.dropped == [2] and dropped == 1
  ids, mask = enc[1]
  assert ids.tolist() == ords("Q: 123") and mask.tolist() == [False] * 2 + [True] * 4
  with pytest.raises(UserError, match="max_len=1"):
    sft.encode(examples, TOK, max_len=1)


def test_from_gsm8k_keeps_or_strips_annotations():
  keep, = sft.from_gsm8k([PENS], "qa")
  assert keep.prompt == f"Question: {PENS.question}\nAnswer:"
  assert keep.target == " " + PENS.answer
  strip, = sft.from_gsm8k([PENS], "qa", keep_annotations=False)
  assert strip.target == " She has 3*4=12 pens.\nThen 12+1=13.\n#### 13"
  final, = sft.from_gsm8k([PENS], "final-only")
  assert final.target == " 13"


def test_socratic_template_keeps_the_breakdown():
  answer = ("How many pens are in the boxes? ** 3*4=<<3*4=12>>12 pens are in the boxes.\n"
            "How many pens does she have now? ** She has 12+1=<<12+1=13>>13 pens.\n#### 13")
  ex, = sft.from_gsm8k([Example(5, PENS.question, answer, "13")], "socratic")
  assert ex.prompt == f"Question: {PENS.question}\nAnswer:" and ex.target == " " + answer
  t = get_template("socratic")
  assert extract.get_extractor(t.extractor)(ex.target) == "13"
  assert "socratic" in t.description


PROGRAMS = [  # (solution, gold): hand-written, with the answer at the last, an early or no step
    (PENS.answer, "13"),
    ("Each cake needs 2*3=<<2*3=6>>6 eggs.\nFor 5 cakes: 5*6=<<5*6=30>>30 eggs.\n"
     "Left over from 40: 40-30=<<40-30=10>>10.\n#### 30", "30"),
    ("A third of 10 cups is 10/3=<<10/3=3.33>>3.33 cups, no wait: she pours 0.1+0.2=<<0.1+0.2=0.3>>"
     "0.3 liters.\n#### 0.3", "0.3"),
    ("The tickets cost 7 dollars.\n#### 7", "7"),
    ("The speed is 150/2.5=<<150/2.5=60>>60 km per hour.\n#### 60", "60"),
]


@pytest.mark.parametrize("solution,gold", PROGRAMS)
def test_python_template_program_computes_the_gold(solution, gold):
  ex, = sft.from_gsm8k([Example(1, "Q?", solution, gold)], "python")
  assert ex.prompt == "Question: Q?\nAnswer (Python):\n"
  lines = ex.target.split("\n")
  assert lines[-3:-1] == ["answer = " + lines[-3][9:], "print(answer)"]
  assert lines[-1] == f"#### {gold}"
  steps = {}
  for line in lines[:-3]:
    name, expr = line.split(" = ")
    assert re.fullmatch(r"step_\d+", name), line
    steps[name] = calculate(expr)                    # every step is plain arithmetic
  ref = re.fullmatch(r"(?:round\()?(step_\d+|[-\d.]+)(?:, \d+)?\)?", lines[-3][9:]).group(1)
  value = steps[ref] if ref in steps else calculate(ref)
  assert extract.answers_match(str(value), gold), (ex.target, value)
  printed = []                                       # and as Python, with no builtins but these
  exec(ex.target, {"__builtins__": {"print": printed.append, "round": round}})  # noqa: S102
  assert [str(p) for p in printed] == [gold], ex.target
  t = get_template("python")
  assert extract.get_extractor(t.extractor)(ex.target) == gold
  assert not any(s in ex.target for s in t.stop)


def test_python_program_shapes():
  lines = get_template("python").target(*PROGRAMS[1]).split("\n")
  assert lines == ["step_1 = 2*3", "step_2 = 5*6", "step_3 = 40-30", "answer = step_2",
                   "print(answer)", "#### 30"]
  assert get_template("python").target(*PROGRAMS[3]).startswith("answer = 7\n")
  assert "answer = round(step_2, 1)" in get_template("python").target(*PROGRAMS[2])


# ---------------------------------------------------------------- rows


def _encoded(lengths):
  """Examples of the given token lengths (with EOS): a 2-char prompt, then the target."""
  return [(np.array([1 + i] * n, np.int32), np.arange(n) >= 2) for i, n in enumerate(lengths)]


def _check_rows(tokens, weights, segments, encoded, seq_len):
  assert tokens.shape[1] == seq_len + 1 and weights.shape == (len(tokens), seq_len)
  seen = []
  for r in range(len(tokens)):
    mask = np.zeros(seq_len + 1, bool)
    for k in range(1, segments[r].max() + 1):
      where = np.flatnonzero(segments[r] == k)
      assert np.all(np.diff(where) == 1)             # one example, contiguous, never split
      i = int(tokens[r, where[0]]) - 1
      ids, m = encoded[i]
      assert tokens[r, where].tolist() == ids.tolist()
      mask[where] = m
      seen.append(i)
    assert np.all(tokens[r, segments[r] == 0] == 0)  # padding
    # weights[t] == 1 exactly when token t + 1 is a target or EOS token of some example
    assert weights[r].tolist() == mask[1:].astype(np.float32).tolist()
  assert sorted(seen) == list(range(len(encoded)))


def test_pack_first_fit_never_splits_and_weights_line_up():
  enc = _encoded([6, 6, 3, 4, 1, 10, 2])
  tokens, weights, segments = sft.pack(enc, 9, 0, return_segments=True)
  assert tokens.dtype == np.int32 and weights.dtype == np.float32
  _check_rows(tokens, weights, segments, enc, 9)
  rows = [sorted({int(t) - 1 for t in row if t}) for row in tokens]
  assert rows == [[0, 2, 4], [1, 3], [5], [6]]     # first fit, in input order
  rng = np.random.default_rng(0)
  enc = _encoded(rng.integers(1, 17, size=300).tolist())
  _check_rows(*sft.pack(enc, 16, 0, return_segments=True), enc, 16)
  assert sft.pack(enc, 16, 0)[0].shape[0] < 300 * 0.7
  with pytest.raises(UserError, match="encode with max_len=17"):
    sft.pack(_encoded([18]), 16, 0)


def test_pad_is_one_example_a_row():
  enc, _ = sft.encode([sft.SFTExample("Q:", " 1"), sft.SFTExample("Q:", " 123")], TOK,
                      max_len=8)
  tokens, weights = sft.pad(enc, 7, pad_id=TOK.pad_id)
  assert tokens.tolist() == [ords("Q: 1") + [0] * 4, ords("Q: 123") + [0, 0]]
  assert weights.tolist() == [[0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0]]
  _, _, segments = sft.pad(enc, 7, pad_id=TOK.pad_id, return_segments=True)
  assert segments.tolist() == [[1] * 5 + [0] * 3, [1] * 7 + [0]]


def test_gsm8k_to_rows_end_to_end():
  examples = sft.from_gsm8k([PENS, Example(1, "1+1?", "1+1=<<1+1=2>>2\n#### 2", "2")], "qa")
  enc, _ = sft.encode(examples, TOK, max_len=161)
  tokens, weights = sft.pack(enc, 160, TOK.pad_id)
  assert len(tokens) == 2                             # 140 + 45 tokens do not share a row
  for row, ex in zip(range(2), examples):
    predicted = "".join(chr(t) if t else "<eos>" for t, w in zip(tokens[row, 1:], weights[row])
                        if w)
    assert predicted == ex.target + "<eos>"
  assert sft.pack(enc, 184, TOK.pad_id)[0].shape == (1, 185)


# ---------------------------------------------------------------- batches


def test_batches_are_a_function_of_seed_and_step_and_cover_each_epoch():
  tokens = np.arange(10 * 5, dtype=np.int32).reshape(10, 5)
  weights = np.ones((10, 4), np.float32)
  data = sft.SFTBatches(tokens, weights, global_batch_size=4, seed=3)
  assert data.num_rows == 10 and data.steps_per_epoch == 2.5
  b = data.batch(7)
  assert np.array_equal(b[0], sft.SFTBatches(tokens, weights, global_batch_size=4,
                                             seed=3).batch(7)[0])
  assert np.array_equal(b[0], sft.batches(tokens, weights, 4, 3, 7)[0])
  rows = [int(r[0]) // 5 for s in range(10) for r in data.batch(s)[0]]
  for epoch in range(4):                             # batches straddle epochs; each has every row
    assert sorted(rows[10 * epoch:10 * epoch + 10]) == list(range(10))
  assert rows[:10] != rows[10:20]                    # a new permutation every epoch
  other = [int(r[0]) // 5 for s in range(3) for r in sft.batches(tokens, weights, 4, 4, s)[0]]
  assert other != rows[:12]
  halves = [sft.SFTBatches(tokens, weights, global_batch_size=4, seed=3, process_index=p,
                           process_count=2).batch(7)[0] for p in range(2)]
  assert np.array_equal(np.concatenate(halves), b[0])
  with pytest.raises(UserError, match="not divisible by process_count=3"):
    sft.SFTBatches(tokens, weights, global_batch_size=4, seed=0, process_count=3)


# ---------------------------------------------------------------- instruction data


def _jsonl(path, rows):
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def test_instruction_data_from_local_jsonl_with_input(tmp_path):
  path = _jsonl(tmp_path / "code.jsonl", [
      {"instruction": "Reverse the word.", "input": "abc", "output": "cba"},
      {"instruction": "Add one to 4.", "input": "", "output": "5"},
      {"instruction": "Say nothing.", "output": "  "},
      {"instruction": "Double 2.", "output": "4"}])
  data = sft.load_instruction_data(path)
  assert [(e.prompt, e.target) for e in data] == [
      ("Instruction: Reverse the word.\nInput: abc\nResponse:", " cba"),
      ("Instruction: Add one to 4.\nResponse:", " 5"),
      ("Instruction: Double 2.\nResponse:", " 4")]
  assert data.skipped == [(2, "field 'output' is empty")] and "3 examples" in data.describe()
  (tmp_path / "train.json").write_text(json.dumps([{"q": "1+2?", "a": "1+2=3\n#### 3"}]))
  ex, = sft.load_instruction_data(str(tmp_path), prompt_field="q", target_field="a",
                                  input_field=None, template="final-only")
  assert (ex.prompt, ex.target) == ("Question: 1+2?\nAnswer:", " 3")


def test_missing_field_names_it_and_lists_the_fields(tmp_path):
  path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
  with pytest.raises(UserError, match=r"no field 'instruction'.*\['completion', 'prompt'\]"):
    sft.load_instruction_data(path)
  with pytest.raises(UserError, match="does not exist"):
    sft.load_instruction_data(str(tmp_path / "missing.jsonl"))


def test_hub_errors(monkeypatch):
  class Fake:
    column_names = ["text"]

  def load_dataset(name, config, split):
    if name == "offline/data":
      raise ConnectionError("no network")
    return Fake()

  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
  with pytest.raises(ResourceUnavailable, match="pass a local .jsonl"):
    sft.load_instruction_data("offline/data")
  with pytest.raises(UserError, match=r"no field 'instruction'.*\['text'\]"):
    sft.load_instruction_data("some/data")


# ---------------------------------------------------------------- loss


def test_masked_token_loss_value_and_zero_gradient_at_masked_tokens():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  targets = np.array([[1, 4, 0], [2, 2, 3]])
  weights = np.array([[1, 0, 1], [0, 0, 1]], np.float32)
  loss, total = sft.masked_token_loss(logits, targets, weights)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  assert float(total) == 3.0
  np.testing.assert_allclose(float(loss), (ce * weights).sum() / 3, rtol=1e-6)
  grad = jax.grad(lambda x: sft.masked_token_loss(x, targets, weights)[0])(jnp.asarray(logits))
  grad = np.asarray(grad)
  assert np.all(grad[weights == 0] == 0.0) and np.all(np.abs(grad[weights == 1]).sum(-1) > 0)
  zero = jax.grad(lambda x: sft.masked_token_loss(x, targets, 0 * weights)[0])(jnp.asarray(logits))
  assert float(sft.masked_token_loss(logits, targets, 0 * weights)[0]) == 0.0
  assert np.all(np.asarray(zero) == 0.0)


def test_agent_traces_learn_the_actions_not_the_observations(monkeypatch):
  """The agent SFT examples of synthetic problems, encoded by GPT-2's BPE: the
  tool's output and the cue after it (" 36\nThought:") are read, not learned;
  the stop string that calls the tool ("\nObservation:") and the actions are learned."""
  import os
  import pathlib
  from jaxslm import tokenizers
  from jaxslm.data.synthetic import SyntheticMath
  from jaxslm.train import finetune_data
  cache = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "tiktoken_cache"
  if "TIKTOKEN_CACHE_DIR" not in os.environ:
    if not cache.is_dir():
      pytest.skip("no cached tiktoken ranks")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache.resolve()))
  gpt2 = tokenizers.get_tokenizer("gpt2")
  gen = SyntheticMath(0, max_steps=3)
  problems = [Example(i, p.question, p.answer, str(p.final_answer))
              for i, p in ((i, gen.problem(i)) for i in range(20))]
  examples = finetune_data.agent_examples(problems)
  enc, _ = sft.encode(examples, gpt2, max_len=512)
  assert len(enc) == 20 and enc.given_tokens > 0
  for e, (ids, mask) in zip(examples, enc):
    values = re.findall(r"\nObservation: (\S+)\nThought:", e.target)
    assert values and [e.target[a:b] for a, b in e.given] == [
        f" {v}\nThought:" for v in values]
    p = len(gpt2.encode(e.prompt))
    assert ids.tolist() == gpt2.encode(e.prompt) + gpt2.encode(e.target) + [gpt2.eos_id]
    given = gpt2.decode([int(i) for i, m in zip(ids[p:], mask[p:]) if not m])
    assert given == "".join(f" {v}\nThought:" for v in values)   # token edges are exact here
    learned = gpt2.decode([int(i) for i, m in zip(ids[p:-1], mask[p:-1]) if m])
    assert learned.count("\nObservation:") == len(values) and "Action: calculator[" in learned
