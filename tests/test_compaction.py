"""Compaction: once most rows are done, the live ones go on in a smaller batch.
Every case is checked against the same call with `compact=False`."""

import jax
import numpy as np
import pytest

from jaxslm.errors import UserError
from jaxslm.models import ModelConfig, init_params
from jaxslm.sampling import engine, generate
from scripted import CharTokenizer, bigram_model, chain

TOK = CharTokenizer()
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def ids(text):
  return TOK.encode(text)


def _same(a, b, atol=1e-5):
  assert len(a.completions) == len(b.completions)
  for x, y in zip(a.completions, b.completions):
    assert (x.prompt_index, x.sample_index) == (y.prompt_index, y.sample_index)
    assert x.tokens == y.tokens and x.finish_reason == y.finish_reason and x.text == y.text
    assert x.forced.tolist() == y.forced.tolist()
    np.testing.assert_allclose(x.logprobs, y.logprobs, atol=atol)


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_scripted_rows_of_many_lengths_come_out_unchanged(chunk):
  """Rows that end after 1 to 25 tokens (EOS or a stop string): the batch shrinks
  8 -> 4 -> 2 -> 1 and every completion is what the whole batch gives."""
  cfg, params = bigram_model(chain(ALPHABET))
  starts = "yxkwstpa"      # row i writes the alphabet after its letter, then EOS
  prompts = [ids("." + s) for s in starts]
  kw = dict(max_new_tokens=40, eos_id=0, tokenizer=TOK, stop_strings=["uv"], chunk_size=chunk)
  whole = generate(cfg, params, prompts, compact=False, **kw)
  compact = generate(cfg, params, prompts, compact=0, **kw)
  _same(compact, whole)
  assert whole.timing["compactions"] == []
  rows = [r for _, r in compact.timing["compactions"]]
  assert rows and rows == sorted(rows, reverse=True) and rows[-1] == 1, compact.timing
  assert [c.text for c in whole.completions][:2] == ["z", "yz"]
  assert whole.completions[-1].finish_reason == "stop_string"


def test_sampled_rows_with_n_completions_keep_their_draws():
  """A random model, sampled, n=3 per prompt; one token in 16 stops a
  row, so rows end at scattered steps. Tokens and log-probabilities are unchanged."""
  cfg = ModelConfig.preset("tiny", dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(1))
  prompts = [[5, 9, 13], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [40, 41]]
  kw = dict(max_new_tokens=48, temperature=[0.7, 1.0, 1.3], n=3, seed=7, top_p=0.95,
            stop_token_ids=range(0, cfg.vocab_size, 16), chunk_size=2)
  whole = generate(cfg, params, prompts, compact=False, **kw)
  compact = generate(cfg, params, prompts, compact=0, **kw)
  assert compact.timing["compactions"], "the stops should end most rows early"
  _same(compact, whole)
  lengths = sorted(len(c.tokens) for c in whole.completions)
  assert lengths[0] < lengths[-1]


def test_calculator_and_streaming_follow_the_rows_they_belong_to():
  table = dict(chain(ALPHABET))
  table.update({"4": "=", "=": "7", "7": ">", "2": ">", ">": "\n"})
  cfg, params = bigram_model(table)
  # Five rows end after "z"; the batch goes from 8 to 4 rows at step 2, while the
  # calculator row still has "2" of its queued "12" to write.
  prompts = [ids("xy"), ids("q <<3*4"), ids("b"), ids("xy"), ids("wx"), *[ids("xy")] * 3]
  kw = dict(max_new_tokens=40, eos_id=0, tokenizer=TOK, calculator=True, chunk_size=1)
  got = {}
  compact = generate(cfg, params, prompts, compact=0,
                     on_tokens=lambda row, new: got.setdefault(row, []).extend(new), **kw)
  whole = generate(cfg, params, prompts, compact=False, **kw)
  _same(compact, whole)
  assert compact.timing["compactions"][0] == [2, 4], compact.timing
  assert compact.completions[1].text == "=12>\n"            # the queued value, in its own row
  assert compact.completions[2].text == ALPHABET[2:]
  assert got == {r: c.tokens for r, c in enumerate(compact.completions)}


def test_the_default_waits_for_enough_budget_and_bad_values_are_refused():
  cfg, params = bigram_model(chain(ALPHABET + ALPHABET.upper()), max_seq_len=128)
  prompts = [ids("." + s) for s in "YXWVUTSa"]     # the last row writes 51 letters
  short = generate(cfg, params, prompts, max_new_tokens=40, eos_id=0)       # < COMPACT_MIN_STEPS
  assert short.timing["compactions"] == []
  long = generate(cfg, params, prompts, max_new_tokens=100, eos_id=0)
  assert long.timing["compactions"] == [[32, 1]]    # the first look, COMPACT_CHUNK steps in
  _same(long, generate(cfg, params, prompts, max_new_tokens=100, eos_id=0, compact=False))
  for bad in (-1, 1.5, "yes"):
    with pytest.raises(UserError, match=r"compact="):
      generate(cfg, params, prompts, max_new_tokens=4, compact=bad)


def test_take_rows_gathers_every_per_row_field():
  """Each DecodeState field with a batch axis is gathered (a field added later and
  missed here would keep the old batch size)."""
  cfg = ModelConfig.preset("tiny", dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = np.arange(4 * 8, dtype=np.int32).reshape(4, 8) % cfg.vocab_size
  state = engine.prefill(params, tokens, np.full(4, 8, np.int32), np.zeros((4, 2), np.uint32),
                         model_cfg=cfg, n=1, max_new=8, queue_len=4)
  settings = {k: np.arange(4, dtype=np.float32) for k in engine.ROW_SETTINGS}
  settings["pad_id"] = np.int32(0)
  small, s2 = engine.take_rows(state, settings, np.array([2, 0], np.int32))
  for name in state.__dataclass_fields__:
    before, after = getattr(state, name), getattr(small, name)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      if np.ndim(x) == 0:
        assert np.asarray(x) == np.asarray(y), name
      else:
        assert y.shape[0] == 2, name
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x)[[2, 0]], err_msg=name)
  assert s2["temperature_b"].tolist() == [2.0, 0.0] and s2["pad_id"] == 0
