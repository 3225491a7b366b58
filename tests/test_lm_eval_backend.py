"""The lm-evaluation-harness backend: parity with the harness's `hf` backend on
a tiny random GPT-2 converted from transformers, stop strings, and the harness
end to end on local task YAMLs (through the Python API and the command line)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install lm-eval")
transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from jaxslm import convert  # noqa: E402
from jaxslm.errors import UserError  # noqa: E402
from jaxslm.evaluation.lm_eval_backend import JaxslmLM  # noqa: E402
from test_convert import COMMON, _random_hf_model  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
TOL = 2e-4      # float32 on both sides; sums over up to 64 tokens
LONG = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. ") * 3
PAIRS = [("Question: 2+2", " = 4"), ("", "Hello world"), ("Weng earns ", "$12 an hour"),
         (LONG, " How many?"), ("a", "b c d e f"), ("x" * 200, "y")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """(hf backend, jaxslm backend, jaxslm checkpoint dir) over the same weights.
  A 64-token context, so long requests are truncated."""
  root = tmp_path_factory.mktemp("lm_eval")
  cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                activation_function="gelu_new",
                                **dict(COMMON, vocab_size=300))   # = the tokenizer's, so sampling decodes
  _, hf_dir = _random_hf_model(cfg, root)
  ckpt = convert.hf_to_jaxslm(hf_dir, str(root / "jax"))
  hf = HFLM(pretrained=hf_dir, dtype="float32", batch_size=4, device="cpu")
  return hf, JaxslmLM(checkpoint=ckpt, batch_size=4, dtype="float32"), ckpt


def _reqs(kind, args):
  return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_matches_hf_backend(models):
  hf, ours, _ = models
  reqs = _reqs("loglikelihood", PAIRS)
  theirs, mine = hf.loglikelihood(reqs), ours.loglikelihood(reqs)
  np.testing.assert_allclose([m[0] for m in mine], [t[0] for t in theirs], atol=TOL, rtol=0)
  assert [m[1] for m in mine] == [t[1] for t in theirs]
  assert ours.truncated["loglikelihood"] >= 2     # LONG and the 200-character context


def test_shared_prefixes_match_separate_forwards_and_hf(models):
  """Multiple-choice requests (4 choices per context, one context longer than
  the model's window) through the shared-prefix KV-cache path, against one
  forward per request and against the hf backend."""
  hf, ours, _ = models
  contexts = ["Question: 2+2\nAnswer:", "", "Weng earns $12 an hour.", LONG]
  pairs = [(c, ch) for c in contexts for ch in (" 4", " five", " 22 apples", "?")]
  reqs = _reqs("loglikelihood", pairs)
  shared = ours.loglikelihood(reqs)
  ours.share_prefixes = False
  try:
    plain = ours.loglikelihood(reqs)
  finally:
    ours.share_prefixes = True
  theirs = hf.loglikelihood(reqs)
  np.testing.assert_allclose([x[0] for x in shared], [x[0] for x in plain], atol=1e-4, rtol=0)
  np.testing.assert_allclose([x[0] for x in shared], [x[0] for x in theirs], atol=TOL, rtol=0)
  assert [x[1] for x in shared] == [x[1] for x in plain] == [x[1] for x in theirs]


def test_shared_prefixes_in_chunks_equal_one_shot(models, monkeypatch):
  """The shared contexts go into the KV cache 16 queries at a time (the sampler's
  chunked prefill, memory linear in the context) with the same scores."""
  from jaxslm.evaluation import lm_eval_backend
  _, ours, _ = models
  contexts = ("Weng earns $12 an hour. " * 2, "Question: 2+2 is what number?\nAnswer:")
  pairs = [(c, ch) for c in contexts for ch in (" 4", " five", " 22 apples", "?")]
  reqs = _reqs("loglikelihood", pairs)
  one_shot = ours.loglikelihood(reqs)
  chunks = []
  monkeypatch.setattr(lm_eval_backend, "prefill_chunk",
                      lambda b, p, s, cfg: chunks.append(p) or 16)
  chunked = ours.loglikelihood(reqs)
  assert chunks and max(chunks) > 16                    # several chunks per prefix
  np.testing.assert_allclose([x[0] for x in chunked], [x[0] for x in one_shot], atol=1e-4,
                             rtol=0)
  assert [x[1] for x in chunked] == [x[1] for x in one_shot]


def test_is_greedy_true_for_the_greedy_continuation(models):
  hf, ours, _ = models
  gen = ours.generate_until(_reqs("generate_until", [
      ("Question: 2+2", {"until": ["never"], "max_gen_toks": 6, "do_sample": False})]))[0]
  assert gen
  reqs = _reqs("loglikelihood", [("Question: 2+2", gen), ("Question: 2+2", gen[::-1] + "?")])
  mine, theirs = ours.loglikelihood(reqs), hf.loglikelihood(reqs)
  assert [m[1] for m in mine] == [t[1] for t in theirs]
  assert mine[0][1] is True


def test_rolling_loglikelihood_matches_hf_backend(models):
  hf, ours, _ = models
  reqs = _reqs("loglikelihood_rolling", [(LONG * 2,), ("short text",)])
  np.testing.assert_allclose(ours.loglikelihood_rolling(reqs), hf.loglikelihood_rolling(reqs),
                             atol=5e-4, rtol=0)


def test_greedy_generation_matches_hf_backend(models):
  hf, ours, _ = models
  reqs = _reqs("generate_until", [
      ("Question: 2+2", {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}),
      ("Weng", {"until": ["zzz"], "max_gen_toks": 12, "do_sample": False}),
      (LONG, {"until": ["zzz"], "max_gen_toks": 12, "do_sample": False})])  # left-truncated
  assert ours.generate_until(reqs) == hf.generate_until(reqs)


def test_generate_until_stops_at_every_until_string(models):
  _, ours, _ = models
  kw = {"max_gen_toks": 40, "do_sample": True, "temperature": 1.0}
  ctx = ["Question: what is 7 times 8?", "Weng earns"]
  full = ours.generate_until(_reqs("generate_until", [(c, {**kw, "until": ["\x00never"]})
                                                      for c in ctx]))
  checked = 0
  for c, text in zip(ctx, full):
    assert len(text) > 10
    for j in (3, len(text) // 2, len(text) - 3):
      stop = text[j:j + 2]
      cut = text.find(stop)
      for until in ([stop], ["\x00never", stop]):
        got = ours.generate_until(_reqs("generate_until", [(c, {**kw, "until": until})]))[0]
        assert got == text[:cut] and stop not in got, (stop, got, text)
        checked += 1
    # several stops: the earliest one wins
    stops = [text[-4:-2], text[2:4]]
    got = ours.generate_until(_reqs("generate_until", [(c, {**kw, "until": stops})]))[0]
    assert got == text[:min(text.find(s) for s in stops)]
  assert checked == 12


def test_bad_model_args_name_the_value(models):
  _, _, ckpt = models
  with pytest.raises(UserError, match="dtype='int8'"):
    JaxslmLM(checkpoint=ckpt, dtype="int8")
  with pytest.raises(UserError, match="batch_size='many'"):
    JaxslmLM(checkpoint=ckpt, batch_size="many")
  with pytest.raises(UserError, match="checkpoint=DIR"):
    JaxslmLM()
  lm = JaxslmLM(checkpoint=ckpt, max_gen_toks=64)
  with pytest.raises(UserError, match="max_gen_toks=64"):
    lm.generate_until(_reqs("generate_until", [("hi", {"until": ["x"], "do_sample": False})]))


def test_chat_template_is_applied(models):
  _, ours, _ = models
  chat = [{"role": "user", "content": "2+2?"}]
  assert ours.apply_chat_template(chat) == "<|user|>2+2?"
  prefilled = chat + [{"role": "assistant", "content": "It is"}]
  assert ours.apply_chat_template(prefilled, add_generation_prompt=False).endswith("It is")


# ------------------------------------------------------------ the harness end to end

def _write_tasks(d: pathlib.Path) -> pathlib.Path:
  d.mkdir(parents=True, exist_ok=True)
  mc = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), "seven"],
         "label": i % 3} for i, (a, b) in enumerate([(1, 2), (3, 4), (10, 5), (7, 7), (2, 9)])]
  gen = [{"question": f"{a} + {b}", "answer": str(a + b)} for a, b in [(1, 1), (2, 3), (4, 4)]]
  text = [{"text": LONG}, {"text": "A short document."}]
  for name, rows in (("mc", mc), ("gen", gen), ("text", text)):
    (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  common = "dataset_path: json\ntest_split: test\n"
  (d / "mc.yaml").write_text(
      f"task: jaxslm_local_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {d}/mc.jsonl\n"
      "output_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
      "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
      "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  (d / "gen.yaml").write_text(
      f"task: jaxslm_local_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {d}/gen.jsonl\n"
      "output_type: generate_until\ndoc_to_text: \"Q: {{question}}\\nA:\"\n"
      "doc_to_target: \"{{answer}}\"\ngeneration_kwargs:\n  until: [\"\\n\"]\n"
      "  max_gen_toks: 8\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
  (d / "text.yaml").write_text(
      f"task: jaxslm_local_text\n{common}dataset_kwargs:\n  data_files:\n    test: {d}/text.jsonl\n"
      "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
      "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
  return d


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
  from lm_eval.tasks import TaskManager   # only the local tasks: indexing the harness's
  return TaskManager(include_path=str(_write_tasks(tmp_path_factory.mktemp("tasks"))),
                     include_defaults=False)     # thousands takes seconds (the CLI test does)


def test_harness_runs_local_tasks_like_the_hf_backend(models, task_manager):
  hf, ours, _ = models
  tm = task_manager
  tasks = ["jaxslm_local_mc", "jaxslm_local_gen", "jaxslm_local_text"]
  mine = lm_eval.simple_evaluate(model=ours, tasks=tasks, task_manager=tm)["results"]
  theirs = lm_eval.simple_evaluate(model=hf, tasks=tasks, task_manager=tm)["results"]
  for task, key in (("jaxslm_local_mc", "acc,none"), ("jaxslm_local_mc", "acc_norm,none"),
                    ("jaxslm_local_gen", "exact_match,none"),
                    ("jaxslm_local_text", "word_perplexity,none"),
                    ("jaxslm_local_text", "bits_per_byte,none")):
    assert mine[task][key] == pytest.approx(theirs[task][key], rel=1e-4), (task, key)


def _cli(args, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
  return subprocess.run([sys.executable, "-m", "jaxslm.evaluation.harness", *args],
                        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def test_command_line_registers_the_jaxslm_model(models, tmp_path):
  _, _, ckpt = models
  tasks = _write_tasks(tmp_path / "tasks")
  gsm8k = ""
  if (GSM8K / "test.jsonl").exists():   # the harness's own gsm8k config on the local copy
    harness_yaml = pathlib.Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    (tasks / "gsm8k_local.yaml").write_text(
        f"include: {harness_yaml}\ntask: gsm8k_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {GSM8K}/train.jsonl\n"
        f"    test: {GSM8K}/test.jsonl\n")
    gsm8k = ",gsm8k_local"
  out = tmp_path / "out"
  run = _cli(["--model", "jaxslm", "--model_args", f"checkpoint={ckpt},batch_size=8,max_gen_toks=8",
              "--tasks", "jaxslm_local_mc" + gsm8k, "--include_path", str(tasks),
              "--limit", "2", "--output_path", str(out)], tmp_path)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
  assert 0.0 <= results["jaxslm_local_mc"]["acc,none"] <= 1.0
  if gsm8k:
    assert "exact_match,strict-match" in results["gsm8k_local"]


def test_unknown_task_is_the_harness_error(models, task_manager):
  _, ours, _ = models
  with pytest.raises(Exception, match="no_such_task_xyz"):
    lm_eval.simple_evaluate(model=ours, tasks=["no_such_task_xyz"], task_manager=task_manager)


def test_evaluate_tasks_and_its_report_section(models, task_manager):
  from jaxslm.evaluation import harness
  _, ours, ckpt = models
  logs = []
  out = harness.evaluate_tasks(ckpt, ["jaxslm_local_mc", "jaxslm_local_gen"], limit=3,
                               task_manager=task_manager, dtype="float32", log=logs.append)
  acc = out["tasks"]["jaxslm_local_mc"]["acc,none"]
  assert 0.0 <= acc["value"] <= 1.0 and acc["stderr"] is not None
  assert out["samples"] == {"jaxslm_local_mc": 3, "jaxslm_local_gen": 3}
  md = harness.markdown([("base", out), ("same", out)])
  assert "| jaxslm_local_mc | acc,none | " in md and md.count(f"{acc['value']:.4f}") >= 2
  assert any("jaxslm_local_mc" in line for line in logs)


def test_eval_launcher_puts_harness_numbers_next_to_gsm8k(models, task_manager, tmp_path,
                                                          monkeypatch):
  from jaxslm.evaluation import cli, harness
  _, _, ckpt = models
  monkeypatch.setattr(harness, "TaskManager", lambda include_path=None: task_manager,
                      raising=False)
  problems = tmp_path / "p.jsonl"
  problems.write_text("".join(json.dumps({"question": f"What is {a} + {a}?",
                                          "answer": f"{a} + {a} = {2 * a}\n#### {2 * a}"}) + "\n"
                              for a in (1, 2, 3)))
  out = tmp_path / "eval"
  rc = cli.main(["--checkpoint", ckpt, "--problems", str(problems), "--max-new-tokens", "8",
                 "--no-perplexity", "--similarity-model", "off", "--out", str(out),
                 "--harness-tasks", "jaxslm_local_mc", "--harness-limit", "2"])
  assert rc == 0
  summary = json.loads((out / "summary.json").read_text())
  s = next(iter(summary.values()))
  assert "accuracy" in s and "acc,none" in s["harness"]["tasks"]["jaxslm_local_mc"]
  report = (out / "report.md").read_text()
  assert "## lm-evaluation-harness" in report and "| jaxslm_local_mc | acc,none |" in report


def test_sentencepiece_checkpoint_scores_and_generates(tmp_path):
  """jaxslm's own SentencePiece tokenizers cannot map special-token text; the
  backend must encode plain text with them instead of refusing."""
  import jax
  from jaxslm.data.synthetic import iter_documents
  from jaxslm.models import ModelConfig, init_params
  from jaxslm.tokenizers import train_sentencepiece
  tok = train_sentencepiece(list(iter_documents(0, 300)), vocab_size=400)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(3))
  lm = JaxslmLM(model=(cfg, params, tok), batch_size=2)
  out = lm.loglikelihood(_reqs("loglikelihood", [("Question: Ava has 3 pens.", " Answer: 3")]))
  assert np.isfinite(out[0][0]) and out[0][0] < 0
  gen = lm.generate_until(_reqs("generate_until", [("Question: Ava", {"until": ["\n"],
                                                                     "max_gen_toks": 4})]))
  assert isinstance(gen[0], str)


def test_a_harness_cache_keeps_each_batch_so_a_stopped_run_resumes(models, tmp_path, monkeypatch):
  """With the harness's response cache (`--use_cache`), generations are written as
  each batch ends: a run stopped in its second batch keeps the first, and the
  run again generates only the rest, with the texts of one whole run."""
  from lm_eval.api.model import CachingLM
  from jaxslm.evaluation import lm_eval_backend
  _, _, ckpt = models
  kw = {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}
  reqs = _reqs("generate_until", [(f"Question: {i}+{i}", kw) for i in range(5)])
  whole = JaxslmLM(checkpoint=ckpt, batch_size=2, dtype="float32").generate_until(reqs)
  real, rows = lm_eval_backend.generate, []

  def stop_in_second_batch(cfg, params, prompts, **k):
    rows.append(len(prompts))
    if len(rows) == 2:
      raise KeyboardInterrupt
    return real(cfg, params, prompts, **k)
  monkeypatch.setattr(lm_eval_backend, "generate", stop_in_second_batch)
  db = str(tmp_path / "cache.db")
  with pytest.raises(KeyboardInterrupt):
    CachingLM(JaxslmLM(checkpoint=ckpt, batch_size=2, dtype="float32"), db).generate_until(reqs)
  rows.clear()
  monkeypatch.setattr(lm_eval_backend, "generate",
                      lambda cfg, params, prompts, **k: rows.append(len(prompts)) or
                      real(cfg, params, prompts, **k))
  again = CachingLM(JaxslmLM(checkpoint=ckpt, batch_size=2, dtype="float32"), db)
  assert again.generate_until(reqs) == whole
  assert sum(rows) == 3    # the first batch of 2 came from the cache
