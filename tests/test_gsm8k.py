"""Tests for jaxslm.data.gsm8k: loading, row validation, subsets, few-shot exemplars.

Every problem here is hand-written; the one test on the real offline split only
reads it (and is skipped when the shared directory is absent).
"""

from __future__ import annotations

import json
import pathlib
import sys
import types

import pytest

from jaxslm.data import gsm8k
from jaxslm.errors import ResourceUnavailable, UserError

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"

PROBLEMS = [
    {"question": "Ana has 3 pens and buys 4 more. How many pens does she have?",
     "answer": "She has 3+4=<<3+4=7>>7 pens.\n#### 7"},
    {"question": "A box holds 250 nails. How many nails are in 4 boxes?",
     "answer": "4 boxes hold 4*250=<<4*250=1000>>1,000 nails.\n#### 1,000"},
    {"question": "Tom earns $12 an hour for 5 hours. How much does he earn?",
     "answer": "He earns 12*5=$<<12*5=60>>60.\n#### $60"},
    {"question": "A rope is 9 m long and is cut in 3 equal parts. How long is each part?",
     "answer": "Each part is 9/3=<<9/3=3>>3 m.\n#### 3"},
    {"question": "Lena reads 20 pages a day. How many pages does she read in a week?",
     "answer": "In 7 days she reads 20*7=<<20*7=140>>140 pages.\n#### 140"},
]
SOCRATIC = [
    {"question": p["question"], "answer": "How many? ** " + p["answer"]} for p in PROBLEMS[:3]
]


def write_jsonl(path: pathlib.Path, rows: list, extra_lines: tuple[str, ...] = ()) -> str:
  lines = [r if isinstance(r, str) else json.dumps(r) for r in rows] + list(extra_lines)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture
def data_dir(tmp_path) -> pathlib.Path:
  write_jsonl(tmp_path / "test.jsonl", PROBLEMS)
  write_jsonl(tmp_path / "train.jsonl", PROBLEMS[:4])
  write_jsonl(tmp_path / "test_socratic.jsonl", SOCRATIC)
  return tmp_path


# ---------------------------------------------------------------- loading


def test_directory_main_and_socratic(data_dir):
  split = gsm8k.load("test", path=str(data_dir))
  assert split.name == "test" and split.rows == 5 and split.num_skipped == 0
  assert split.source == str(data_dir / "test.jsonl")
  assert [e.index for e in split.examples] == [0, 1, 2, 3, 4]
  assert split.examples[0].question == PROBLEMS[0]["question"]
  assert split.examples[0].answer == PROBLEMS[0]["answer"]
  assert split.describe() == f"test: 5 problems from {data_dir / 'test.jsonl'} (0 malformed rows skipped)"

  socratic = gsm8k.load("test", config="socratic", path=str(data_dir))
  assert socratic.source.endswith("test_socratic.jsonl")
  assert len(socratic.examples) == 3 and socratic.examples[0].answer.startswith("How many? **")
  assert len(gsm8k.load("train", path=str(data_dir)).examples) == 4


def test_gold_drops_commas_and_dollars(data_dir):
  golds = [e.gold for e in gsm8k.load("test", path=str(data_dir)).examples]
  assert golds == ["7", "1000", "60", "3", "140"]


def test_gold_is_after_the_last_marker(tmp_path):
  row = {"question": "q?", "answer": "first #### 1\nthen\n####  -2,500 "}
  split = gsm8k.load(path=write_jsonl(tmp_path / "x.jsonl", [row]))
  assert split.examples[0].gold == "-2500"


def test_missing_split_file_lists_available(data_dir):
  with pytest.raises(UserError) as e:
    gsm8k.load("train", config="socratic", path=str(data_dir))
  msg = str(e.value)
  assert "'train_socratic.jsonl'" in msg
  for name in ("test.jsonl", "test_socratic.jsonl", "train.jsonl"):
    assert name in msg


def test_bad_config_and_paths(data_dir, tmp_path):
  with pytest.raises(UserError, match="'mian'"):
    gsm8k.load("test", config="mian", path=str(data_dir))
  with pytest.raises(UserError, match="does not exist"):
    gsm8k.load(path=str(tmp_path / "nowhere"))
  (tmp_path / "x.csv").write_text("question,answer\n")
  with pytest.raises(UserError, match="neither .jsonl"):
    gsm8k.load(path=str(tmp_path / "x.csv"))


def test_single_jsonl_file_named_after_stem(tmp_path):
  file = write_jsonl(tmp_path / "my_eval.jsonl", PROBLEMS[:2])
  split = gsm8k.load("ignored", path=file)
  assert split.name == "my_eval" and split.source == file and len(split.examples) == 2


def test_json_list_file(tmp_path):
  file = tmp_path / "dev.json"
  file.write_text(json.dumps(PROBLEMS[:3] + [["not", "a", "row"]]), encoding="utf-8")
  split = gsm8k.load(path=str(file))
  assert split.name == "dev" and len(split.examples) == 3 and split.rows == 4
  assert split.skipped == [(3, "a JSON list, expected an object")]


def test_json_file_errors(tmp_path):
  (tmp_path / "a.json").write_text('{"data": [1, 2')
  with pytest.raises(UserError):
    gsm8k.load(path=str(tmp_path / "a.json"))
  (tmp_path / "b.json").write_text("[1, 2")
  with pytest.raises(UserError, match="not valid JSON"):
    gsm8k.load(path=str(tmp_path / "b.json"))
  (tmp_path / "c.json").write_text('"just a string"')
  with pytest.raises(UserError, match="expected a list of rows"):
    gsm8k.load(path=str(tmp_path / "c.json"))


def test_malformed_rows_are_counted_with_reasons(tmp_path):
  rows = [
      PROBLEMS[0],
      '{"question": "broken", "answer": ',              # 1: bad JSON
      {"answer": "x\n#### 1"},                          # 2: no question
      {"question": "q", "answer": "no final answer"},   # 3: no ####
      {"question": 7, "answer": "x\n#### 1"},           # 4: non-str
      {"question": "q", "answer": "  "},                # 5: empty
      {"question": "q", "answer": "x\n####  "},         # 6: nothing after ####
      [1, 2],                                           # 7: not an object
      "",                                               # blank: not a row
      PROBLEMS[1],                                      # 8
  ]
  split = gsm8k.load(path=write_jsonl(tmp_path / "t.jsonl", rows, extra_lines=("", "   ")))
  assert split.rows == 9 and split.num_skipped == 7
  assert [e.index for e in split.examples] == [0, 8]
  reasons = dict(split.skipped)
  assert sorted(reasons) == [1, 2, 3, 4, 5, 6, 7]
  assert "line 2 is not valid JSON" in reasons[1]
  assert "no field 'question'" in reasons[2]
  assert "####" in reasons[3]
  assert "'question' holds a int" in reasons[4]
  assert "'answer' is empty" in reasons[5]
  assert "followed by nothing" in reasons[6]
  assert "JSON list" in reasons[7]
  assert "2 problems" in split.describe() and "7 malformed rows skipped" in split.describe()
  assert "row 1: line 2 is not valid JSON" in split.describe()


def test_all_malformed_is_an_error(tmp_path):
  rows = [{"question": "q", "answer": "no marker"}, "{oops", {"answer": "#### 1"}]
  with pytest.raises(UserError, match="all 3 rows are malformed") as e:
    gsm8k.load(path=write_jsonl(tmp_path / "bad.jsonl", rows))
  assert "#### N" in str(e.value)
  (tmp_path / "empty.jsonl").write_text("\n\n")
  with pytest.raises(UserError, match="holds no rows"):
    gsm8k.load(path=str(tmp_path / "empty.jsonl"))


def test_env_var_is_the_default_directory(data_dir, monkeypatch):
  monkeypatch.setenv(gsm8k.ENV_DIR, str(data_dir))
  split = gsm8k.load("train")
  assert split.source == str(data_dir / "train.jsonl") and len(split.examples) == 4


def fake_datasets(monkeypatch, load_dataset) -> None:
  module = types.ModuleType("datasets")
  module.load_dataset = load_dataset
  monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_unreachable_is_resource_unavailable(monkeypatch):
  monkeypatch.delenv(gsm8k.ENV_DIR, raising=False)

  def offline(*args, **kwargs):
    raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

  fake_datasets(monkeypatch, offline)
  with pytest.raises(ResourceUnavailable) as e:
    gsm8k.load("test")
  assert "--data ../shared/data/gsm8k" in str(e.value)
  assert "ConnectionError" in str(e.value) and isinstance(e.value, UserError)


def test_hub_rows_are_validated(monkeypatch):
  monkeypatch.delenv(gsm8k.ENV_DIR, raising=False)
  calls = []

  def load_dataset(name, config, split):
    calls.append((name, config, split))
    return PROBLEMS[:2] + [{"question": "q", "answer": "none"}]

  fake_datasets(monkeypatch, load_dataset)
  split = gsm8k.load("test", config="socratic")
  assert calls == [("openai/gsm8k", "socratic", "test")]
  assert split.source == "hf:openai/gsm8k/socratic/test"
  assert len(split.examples) == 2 and split.skipped[0][0] == 2


@pytest.mark.skipif(not (SHARED / "test.jsonl").is_file(), reason="no offline GSM8K")
def test_real_offline_test_split():
  split = gsm8k.load("test", path=str(SHARED))
  assert len(split.examples) == 1319 and split.num_skipped == 0 and split.rows == 1319
  for example in split.examples:
    float(example.gold)
  assert "1,319 problems" in split.describe()


# ---------------------------------------------------------------- select


def make_examples(n: int) -> list[gsm8k.Example]:
  return [gsm8k.Example(index=i, question=f"q{i}", answer=f"a\n#### {i}", gold=str(i))
          for i in range(n)]


def test_select_is_deterministic_sorted_and_nested():
  pool = make_examples(100)
  ten, note = gsm8k.select(pool, 10, seed=7)
  assert note is None and len(ten) == 10
  assert [e.index for e in ten] == sorted(e.index for e in ten)
  assert gsm8k.select(pool, 10, seed=7)[0] == ten
  # Depends only on (len, limit, seed): other contents, same positions.
  other = [gsm8k.Example(e.index, "x" + e.question, e.answer, e.gold) for e in pool]
  assert [e.index for e in gsm8k.select(other, 10, seed=7)[0]] == [e.index for e in ten]
  assert gsm8k.select(pool, 10, seed=8)[0] != ten
  # A smaller limit with the same seed is a subset of a larger one.
  twenty = {e.index for e in gsm8k.select(pool, 20, seed=7)[0]}
  assert {e.index for e in ten} <= twenty
  assert {e.index for e in gsm8k.select(pool, 3, seed=7)[0]} <= {e.index for e in ten}


def test_select_all_and_errors():
  pool = make_examples(5)
  assert gsm8k.select(pool, None) == (pool, None)
  assert gsm8k.select(pool, 0) == (pool, None)
  assert gsm8k.select(pool, 5) == (pool, None)
  chosen, note = gsm8k.select(pool, 9)
  assert chosen == pool
  assert note == "--limit 9 is larger than the 5 problems: using all 5"
  with pytest.raises(UserError, match="-1"):
    gsm8k.select(pool, -1)
  with pytest.raises(UserError, match="integer"):
    gsm8k.select(pool, 2.5)


# ---------------------------------------------------------------- fewshot


def test_fewshot_first_n():
  pool = make_examples(6)
  assert gsm8k.fewshot(pool, 3) == pool[:3]
  assert gsm8k.fewshot(pool, 3, exclude="q1") == [pool[0], pool[2], pool[3]]
  assert gsm8k.fewshot(pool, 0) == []
  assert gsm8k.fewshot(pool, 6) == pool


def test_fewshot_random():
  pool = make_examples(30)
  shots = gsm8k.fewshot(pool, 4, sampler="random", seed=3)
  assert len(shots) == 4 and len({e.index for e in shots}) == 4
  assert gsm8k.fewshot(pool, 4, sampler="random", seed=3) == shots
  assert gsm8k.fewshot(pool, 4, sampler="random", seed=4) != shots
  # An exclude not drawn changes nothing; a drawn one is replaced by the next draw.
  assert gsm8k.fewshot(pool, 4, sampler="random", seed=3, exclude="not in pool") == shots
  unpicked = next(e for e in pool if e not in shots)
  assert gsm8k.fewshot(pool, 4, sampler="random", seed=3, exclude=unpicked.question) == shots
  without = gsm8k.fewshot(pool, 4, sampler="random", seed=3, exclude=shots[1].question)
  assert shots[1] not in without and len(without) == 4
  assert without[:3] == [shots[0], shots[2], shots[3]]
  # Everything but the excluded one.
  small = make_examples(3)
  rest = gsm8k.fewshot(small, 2, sampler="random", exclude="q0")
  assert sorted(e.index for e in rest) == [1, 2]


def test_fewshot_errors():
  pool = make_examples(3)
  with pytest.raises(UserError, match="'nearest'.*first_n"):
    gsm8k.fewshot(pool, 1, sampler="nearest")
  with pytest.raises(UserError, match="k=-1"):
    gsm8k.fewshot(pool, -1)
  with pytest.raises(UserError, match="k=4"):
    gsm8k.fewshot(pool, 4)
  with pytest.raises(UserError, match="1 excluded"):
    gsm8k.fewshot(pool, 3, exclude="q2")


def test_strip_calculator():
  assert gsm8k.strip_calculator("2*3=<<2*3=6>>6") == "2*3=6"
  text = "She pays 80,000+50,000=$<<80000+50000=130000>>130,000\n#### 130000"
  assert gsm8k.strip_calculator(text) == "She pays 80,000+50,000=$130,000\n#### 130000"
  assert gsm8k.strip_calculator("no markup << here") == "no markup << here"
