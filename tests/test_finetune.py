"""launch/finetune.py and jaxslm.train.finetune: every method trains at tiny scale, writes
adapters and a merged export, resumes exactly, and loads back for sampling and evaluation."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxslm
from jaxslm import lora
from jaxslm.checkpoint import save_params
from jaxslm.config import load_config
from jaxslm.data.synthetic import SyntheticMath
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig, init_params
from jaxslm.tokenizers import train_sentencepiece
from jaxslm.train.finetune import run

ROOT = pathlib.Path(__file__).resolve().parents[1]
SFT_CONFIGS = sorted((ROOT / "configs").glob("sft_*.py"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A tiny random base checkpoint with a SentencePiece tokenizer, and GSM8K-style data."""
  root = tmp_path_factory.mktemp("ft")
  gen = SyntheticMath(3)
  problems = [gen.problem(i) for i in range(80)]
  tok = train_sentencepiece([f"Question: {p.question}\nAnswer: {p.answer}" for p in problems],
                            vocab_size=400)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32")
  ckpt = save_params(str(root / "base"), init_params(cfg, jax.random.PRNGKey(0)),
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  data = root / "gsm8k"
  data.mkdir()
  for split, rows in (("train", problems[:64]), ("test", problems[64:])):
    (data / f"{split}.jsonl").write_text("".join(
        json.dumps({"question": p.question, "answer": p.answer}) + "\n" for p in rows))
  return ckpt, str(data)


def tiny(config, base, **train):
  ckpt, data = base
  config.init_from = ckpt
  config.model_dtype = "float32"
  config.data.path = data
  config.data.val_examples = 8
  config.lora.rank = 4
  config.qlora.block_size = 16
  config.train.update({**dict(steps=2, batch_size=4, seq_len=128, warmup_steps=0, log_every=1,
                              eval_every=2, checkpoint_every=2), **train})
  config.eval.update(problems=0, max_new_tokens=16, batch_size=4)   # on in lora_run only
  return config


def test_there_are_configs_for_every_method():
  assert {p.stem for p in SFT_CONFIGS} == {f"sft_gsm8k_{m}" for m in
                                           ("lora", "qlora", "full", "stacked")} | {
      "sft_synthetic", "sft_synthetic_calculator", "sft_synthetic_agent"}
  for p in SFT_CONFIGS:
    assert "launch/finetune.py" in p.read_text().split('"""')[1], p


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lora") / "w"
  c = tiny(load_config(ROOT / "configs/sft_gsm8k_lora.py"), base)
  c.eval.problems = 4
  return run(c, str(workdir)), workdir


@pytest.mark.parametrize("method", ["qlora", "full", "stacked"])
def test_config_trains_two_steps(method, base, lora_run, tmp_path):
  c = tiny(load_config(ROOT / f"configs/sft_gsm8k_{method}.py"), base)
  if method == "stacked":
    c.stack_from = str(lora_run[1])
  out = run(c, str(tmp_path / "w"))
  assert out["step"] == 2 and np.isfinite(out["last"]["loss"]) and "val_loss" in out["last"]
  assert (tmp_path / "w/export").is_dir()
  assert (tmp_path / "w/adapters").is_dir() == (method != "full")
  if method == "full":
    assert out["counts"]["percent"] == pytest.approx(100.0)
  if method == "qlora":
    from jaxslm import quant
    leaves = jax.tree.leaves(out["params"], is_leaf=lambda x: isinstance(x, lora.LoraWeight))
    assert any(isinstance(x, lora.LoraWeight) and quant.is_quantized(x.w) for x in leaves)
  if method == "stacked":   # adapter 1 (from the lora run) is exactly as it was trained
    first = lora_run[0]["params"]["layers_0"]["attn"]["q_proj"]["kernel"]
    now = out["params"]["layers_0"]["attn"]["q_proj"]["kernel"]
    assert len(now.a) == 2 and (tmp_path / "w/stage1_adapters").is_dir()   # pinned copy
    reloaded = jaxslm.load(str(tmp_path / "w"))      # base + stage 1 + stage 2, unmerged
    assert len(reloaded.params["layers_0"]["attn"]["q_proj"]["kernel"].a) == 2
    np.testing.assert_array_equal(np.asarray(now.a[0]), np.asarray(first.a[0]))
    np.testing.assert_array_equal(np.asarray(now.b[0]), np.asarray(first.b[0]))


def context_base(root, docs) -> str:
  """A tiny random base with a context of 256 and a tokenizer trained on `docs`
  (the synthetic formats' examples are longer than the shared base's context)."""
  tok = train_sentencepiece(docs, vocab_size=512)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256, dtype="float32")
  return save_params(str(root / "base"), init_params(cfg, jax.random.PRNGKey(0)),
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})


def test_synthetic_config_trains_and_evaluates_on_held_out_problems(tmp_path):
  """configs/sft_synthetic.py: GRPO's warm start, from synthetic problems alone
  (no GSM8K directory); its evaluation scores held-out synthetic problems."""
  from jaxslm.data.templates import get_template
  gen, tmpl = SyntheticMath(0, max_steps=2), get_template("structured")
  docs = [tmpl.prompt(p.question) + tmpl.target(p.answer, str(p.final_answer))
          for p in map(gen.problem, range(60))]
  c = tiny(load_config(ROOT / "configs/sft_synthetic.py"), (context_base(tmp_path, docs), ""))
  c.data.update(path="", synthetic_problems=40)
  c.train.seq_len = 256   # the structured examples run to ~290 tokens with this tokenizer
  c.eval.problems = 3
  out = run(c, str(tmp_path / "w"))
  assert out["step"] == 2 and "synthetic problems" in out["data"]["source"]
  assert out["data"]["train_examples"] + out["data"]["dropped_too_long"] == 40 - 8   # 8 held out
  assert "gsm8k_em" in out["last"]
  from jaxslm.data.synthetic import HELDOUT_OFFSET
  from jaxslm.train.finetune_data import _gsm8k_subset
  held = _gsm8k_subset(c)
  assert [e.index for e in held] == [HELDOUT_OFFSET + i for i in range(3)]


def test_synthetic_agent_traces_train_and_evaluate_as_episodes(base, tmp_path):
  """configs/sft_synthetic_agent.py: prompts in the "react" agent format, targets
  the rest of each trace; evaluation runs agent episodes. Bad formats are refused."""
  from jaxslm.config import finetune_config
  from jaxslm.data.synthetic import to_react
  from jaxslm.train import finetune_data
  gen = SyntheticMath(0, max_steps=2)
  ckpt = context_base(tmp_path, [to_react(gen.problem(i)) for i in range(60)])
  c = tiny(load_config(ROOT / "configs/sft_synthetic_agent.py"), (ckpt, ""))
  c.data.update(path="", synthetic_problems=30)
  c.train.seq_len = 256
  c.eval.update(problems=2, max_new_tokens=16)
  examples = finetune_data.agent_examples(finetune_data.synthetic_examples(c.data, start=0, n=2))
  assert examples[0].prompt.startswith("Question: ") and examples[0].prompt.endswith("\nThought:")
  assert "\nAction: calculator[" in examples[0].target
  assert examples[0].target.rstrip().rsplit("Final Answer: ", 1)[1].isdigit()
  out = run(c, str(tmp_path / "w"))
  assert out["step"] == 2 and "as agent" in out["data"]["source"]
  assert 0.0 <= out["last"]["gsm8k_em"] <= 1.0
  for field, value, match in (("synthetic_format", "json", "valid formats: text, calculator"),
                              ("keep_annotations", False, "keep_annotations=False")):
    d = finetune_config().data
    d.update({"source": "synthetic", "synthetic_format": "calculator", field: value})
    with pytest.raises(UserError, match=match):
      finetune_data.synthetic_format(d)


def test_lora_run_outputs_load_back_and_agree(lora_run, base):
  out, workdir = lora_run
  assert out["counts"]["trainable"] < out["counts"]["total"] * 0.2
  assert {"gsm8k_em", "gsm8k_em_stderr", "rouge1", "val_loss"} <= set(out["last"])
  adapted = jaxslm.load(str(workdir))          # base + adapters, unmerged
  merged = jaxslm.load(str(workdir / "export"))
  leaf = adapted.params["layers_0"]["attn"]["v_proj"]["kernel"]
  assert isinstance(leaf, lora.LoraWeight)
  assert np.abs(np.asarray(leaf.b[0])).max() > 0          # it trained
  base_loaded = jaxslm.load(base[0])                       # the base is untouched
  np.testing.assert_array_equal(np.asarray(leaf.w),
                                np.asarray(base_loaded.params["layers_0"]["attn"]["v_proj"]["kernel"]))
  prompt = "Question: Ava has 3 boxes of 12 pens. How many pens?\nAnswer:"
  assert jaxslm.sample(adapted, prompt, max_new_tokens=12) == \
      jaxslm.sample(merged, prompt, max_new_tokens=12)
  metrics = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics if "loss" in m] == [1, 2]


def test_resume_continues_exactly(base, tmp_path):
  c = tiny(load_config(ROOT / "configs/sft_gsm8k_lora.py"), base, steps=4, decay_steps=4)
  straight = run(c, str(tmp_path / "a"))
  c.train.steps = 2
  run(c, str(tmp_path / "b"))
  with pytest.raises(UserError, match="--resume"):
    run(c, str(tmp_path / "b"))
  c.train.steps = 4
  resumed = run(c, str(tmp_path / "b"), resume=True)
  for x, y in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_config_errors(base, tmp_path):
  c = tiny(load_config(ROOT / "configs/sft_gsm8k_lora.py"), base)
  c.method = "prefix"
  with pytest.raises(UserError, match="valid methods: lora, qlora, full, stacked"):
    run(c, str(tmp_path / "a"))
  c = tiny(load_config(ROOT / "configs/sft_gsm8k_lora.py"), base)
  c.lora.rank = 100
  with pytest.raises(UserError, match="rank"):
    run(c, str(tmp_path / "b"))
  c = tiny(load_config(ROOT / "configs/sft_gsm8k_stacked.py"), base)
  c.stack_from = ""
  with pytest.raises(UserError, match="stack_from"):
    run(c, str(tmp_path / "c"))


def test_launcher_and_eval_on_the_workdir(base, tmp_path):
  ckpt, data = base
  workdir = tmp_path / "sft"
  args = ["--config", str(ROOT / "configs/sft_gsm8k_lora.py"), f"--config.init_from={ckpt}",
          f"--config.data.path={data}", "--config.data.val_examples=8", "--config.lora.rank=4",
          "--config.train.steps=2", "--config.train.batch_size=4", "--config.train.seq_len=128",
          "--config.train.warmup_steps=0", "--config.eval.problems=0",
          "--config.model_dtype=float32", "--workdir", str(workdir)]
  res = subprocess.run([sys.executable, str(ROOT / "launch/finetune.py"), *args],
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stdout + res.stderr
  res = subprocess.run([sys.executable, str(ROOT / "launch/eval.py"), "--checkpoint",
                        str(workdir), "--data", data, "--max-new-tokens", "8", "--limit", "4",
                        "--no-perplexity", "--similarity-model", "off",
                        "--out", str(tmp_path / "eval")], capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 0, res.stdout + res.stderr
  summary = json.loads((tmp_path / "eval/summary.json").read_text())["sft"]
  assert summary["template"] == "qa" and summary["problems"] == 4
  bad = subprocess.run([sys.executable, str(ROOT / "launch/finetune.py"), *args[:2],
                        "--config.init_from="], capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "init_from" in bad.stderr
  bad = subprocess.run([sys.executable, str(ROOT / "launch/finetune.py"), "--workdir",
                        str(tmp_path / "nothing"), "--resume"], capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 2 and "no fine-tuning checkpoint" in bad.stderr


def test_stacked_needs_stage_one_kernels_covered_and_pins_its_adapters(base, lora_run, tmp_path):
  c = tiny(load_config(ROOT / "configs/sft_gsm8k_stacked.py"), base)
  c.stack_from = str(lora_run[1])
  c.lora.targets = r"attn/q_proj/kernel$"      # stage 1 adapted q and v
  with pytest.raises(UserError, match="does not cover kernels adapted in stage 1"):
    run(c, str(tmp_path / "a"))


def test_adapter_directory_is_not_a_model(lora_run):
  with pytest.raises(UserError, match="adapters alone"):
    jaxslm.load(str(lora_run[1] / "adapters"))


DP_SCRIPT = """
import json, sys
import jax, numpy as np
from jaxslm.config import load_config
from jaxslm.train.finetune import run
c = load_config(sys.argv[1])
c.init_from, c.data.path = sys.argv[2], sys.argv[3]
c.model_dtype, c.data.val_examples, c.lora.rank, c.lora.dropout = "float32", 8, 4, 0.0
c.train.update(steps=3, batch_size=8, seq_len=128, warmup_steps=0, log_every=1, eval_every=3,
               checkpoint_every=3, grad_accum=int(sys.argv[5]))
c.eval.problems = 0
out = run(c, sys.argv[4])
print(json.dumps({"devices": jax.device_count(),
                  "b": np.asarray(out["params"]["layers_0"]["attn"]["q_proj"]["kernel"].b[0]).tolist()}))
"""


def test_data_parallel_over_four_devices_matches_one(base, tmp_path):
  """1 device, 4 devices, and 4 devices in 2 micro-batches per update: one training."""
  import os
  ckpt, data = base
  outs = []
  for n, a in ((1, 1), (4, 1), (4, 2)):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    res = subprocess.run([sys.executable, "-c", DP_SCRIPT, str(ROOT / "configs/sft_gsm8k_lora.py"),
                          ckpt, data, str(tmp_path / f"w{n}_{a}"), str(a)], capture_output=True,
                         text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert "Fine-tuning step, " + ("2 micro-batches of 4 rows" if a == 2 else "8 rows") in res.stdout
  assert [o["devices"] for o in outs] == [1, 4, 4]
  for o in outs[1:]:
    np.testing.assert_allclose(outs[0]["b"], o["b"], rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(outs[0]["b"])).max() > 0


def test_micro_batches_give_the_update_of_the_whole_batch(base, tmp_path):
  """train.grad_accum=2 and 4 against one pass over the batch: the token-weighted
  mean of the union (packed rows hold different numbers of target tokens)."""
  from jaxslm.train import finetune
  outs = []
  for a in (1, 2, 4):
    c = tiny(load_config(ROOT / "configs/sft_gsm8k_lora.py"), base, steps=2, grad_accum=a)
    c.lora.dropout = 0.0
    outs.append(run(c, str(tmp_path / f"a{a}")))
  for out in outs[1:]:
    for x, y in zip(jax.tree.leaves(outs[0]["params"]), jax.tree.leaves(out["params"])):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-6)
  moved = [np.abs(np.asarray(x.b)).max() for x in jax.tree.leaves(
      outs[0]["params"], is_leaf=lambda x: hasattr(x, "b")) if hasattr(x, "b")]
  assert moved and max(moved) > 0
  # The weighting matters: the plain mean of the micro-batch means is another update.
  import jax.numpy as jnp
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 2, 9)), jnp.int32)
  weights = jnp.asarray([[[1] * 8, [1] * 8], [[0] * 7 + [1], [0] * 8]], jnp.float32)
  cfg = ModelConfig.preset("tiny", vocab_size=64, dtype="float32")
  params, frozen = lora.split(init_params(cfg, jax.random.PRNGKey(1)), "all")
  whole, g_whole = finetune._grads(params, frozen, tokens.reshape(4, 9), weights.reshape(4, 8), None,
                                   model_cfg=cfg, dropout=False)
  micro, g_micro = finetune._grads(params, frozen, tokens, weights, None, model_cfg=cfg,
                                   dropout=False)
  np.testing.assert_allclose(float(whole), float(micro), rtol=1e-5)
  for x, y in zip(jax.tree.leaves(g_whole), jax.tree.leaves(g_micro)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-7)
  first, _ = finetune._grads(params, frozen, tokens[0], weights[0], None, model_cfg=cfg, dropout=False)
  second, _ = finetune._grads(params, frozen, tokens[1], weights[1], None, model_cfg=cfg, dropout=False)
  assert abs(float(whole) - (float(first) + float(second)) / 2) > 1e-3


def test_grad_accum_that_cannot_split_the_batch_and_the_memory_advice(base, tmp_path):
  from jaxslm.train.finetune import memory_advice
  c = tiny(load_config(ROOT / "configs/sft_gsm8k_lora.py"), base, grad_accum=3)
  with pytest.raises(UserError, match=r"train.grad_accum=3: train.batch_size=4"):
    run(c, str(tmp_path / "a"))
  c.train.grad_accum = 0
  with pytest.raises(UserError, match=r"train.grad_accum=0 must be a positive"):
    run(c, str(tmp_path / "b"))
  c.train.update(grad_accum=1, batch_size=16)
  assert memory_advice(c.train, need=30, free=10) == (
      "set train.grad_accum=4 (the same update in micro-batches)")
  assert "lower train.seq_len (128)" in memory_advice(c.train, need=10**6, free=10)


def test_stop_request_sets_on_the_first_signal_and_restores_handlers():
  import os
  import signal
  from jaxslm.train.signals import StopRequest
  before = signal.getsignal(signal.SIGTERM)
  stop = StopRequest().install()
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested
    assert signal.getsignal(signal.SIGTERM) == before   # a second signal acts as before
  finally:
    stop.restore()
  assert signal.getsignal(signal.SIGTERM) == before
