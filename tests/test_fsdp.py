"""FSDP (`mesh.fsdp > 1`) in fine-tuning and GRPO against data parallelism alone,
in one process with 4 fake CPU devices (a subprocess, as XLA_FLAGS must be set
before JAX starts):

  LoRA fine-tuning: fsdp=1 for 3 steps, vs fsdp=4 for 2 steps then resumed
  with fsdp=2 (the checkpoint of 4-way shards restored as 2-way shards);
  LoRA GRPO with two passes per batch (mu=2): fsdp=1 vs fsdp=4.

The arithmetic is the same except for the order of cross-device sums, so
losses and parameters agree to float32 rounding. The frozen base, the
adapters and AdamW state are checked to be split over "fsdp" (by the rules of
`jaxslm.train.parallel`), and the GRPO rollouts, sampled from a gathered copy,
give the same rewards exactly.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6

SCRIPT = r"""
import json, sys, pathlib
import jax, numpy as np
sys.path.insert(0, sys.argv[2])
from test_distributed import make_base
from jaxslm import lora
from jaxslm.config import load_config
from jaxslm.data.synthetic import SyntheticMath
from jaxslm.train import finetune, grpo, parallel

assert jax.device_count() == 4, jax.devices()
root = pathlib.Path(sys.argv[1])
base = make_base(root)
gen = SyntheticMath(3, max_steps=1)
data = root / "gsm8k"
data.mkdir()
problems = [gen.problem(i) for i in range(48)]
for split, rows in (("train", problems[:40]), ("test", problems[40:])):
  (data / f"{split}.jsonl").write_text("".join(
      json.dumps({"question": p.question, "answer": p.answer}) + "\n" for p in rows))


def length_reward(prompts, completions, answers):
  # Varies between a random model's completions, so every group has a signal.
  return [len(c) / 10.0 for c in completions]


def shard_rows(x):
  return x.addressable_shards[0].data.shape[0]


def flat(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def sft(name, fsdp, steps, resume=False):
  c = load_config(sys.argv[3] + "/configs/sft_gsm8k_lora.py")
  c.init_from, c.data.path, c.model_dtype = base, str(data), "float32"
  c.data.val_examples, c.lora.rank, c.lora.dropout = 4, 4, 0.0
  c.train.update(steps=steps, batch_size=8, seq_len=96, warmup_steps=0, decay_steps=3,
                 log_every=1, eval_every=100, checkpoint_every=100)
  c.eval.problems = 0
  c.mesh.fsdp = fsdp
  out = finetune.run(c, str(root / name), resume=resume)
  losses = [json.loads(l) for l in open(root / name / "metrics.jsonl")]
  return out, {r["step"]: r["loss"] for r in losses if "loss" in r}


def rl(name, fsdp):
  c = load_config(sys.argv[3] + "/configs/grpo_synthetic.py")
  c.init_from, c.model_dtype = base, "float32"
  c.data.update(synthetic_max_steps=1, train_problems=32, prompt_budget=96)
  # 2 prompts on 4 devices: the shared prompt prefix is replicated, the 8 rows split
  c.grpo.update(prompts_per_step=2, G=4, temperatures=(0.8, 0.9, 1.1, 1.2), max_new_tokens=16,
                mu=2)
  c.rewards.update(names=("format", "__main__:length_reward"), weights=(0.5, 1.0))
  c.lora.update(rank=4, alpha=8.0)
  c.train.update(steps=2, checkpoint_every=100, log_every=1)
  c.eval.update(problems=0, every=0)
  c.mesh.fsdp = fsdp
  return grpo.run(c, str(root / name))


result = {}
one, loss_one = sft("sft1", 1, 3)
part, _ = sft("sft4", 4, 2)
q = part["params"]["layers_0"]["attn"]["q_proj"]["kernel"]
result["sft_shards"] = [shard_rows(q.w), shard_rows(q.a[0]), q.w.shape[0]]
two, loss_fsdp = sft("sft4", 2, 3, resume=True)
result["sft_loss"] = [loss_one, loss_fsdp]
result["sft_param_diff"] = max(float(np.max(np.abs(a - b)))
                               for a, b in zip(flat(one["params"]), flat(two["params"])))
result["sft_b_max"] = float(np.max(np.abs(flat(one["params"]["layers_0"]["attn"]["q_proj"]["kernel"].b[0]))))

g1, g4 = rl("grpo1", 1), rl("grpo4", 4)
a = g4["trainable"]["layers_0"]["mlp"]["down_proj"]["kernel"]["b0"]
result["grpo_shards"] = [a.shape[1], a.addressable_shards[0].data.shape[1]]
keys = ("reward_mean", "reward_std", "completion_len", "loss", "kl", "grad_norm", "entropy",
        "clip_frac")
result["grpo"] = [[{k: r[k] for k in keys} for r in g["records"]] for g in (g1, g4)]
result["grpo_param_diff"] = max(float(np.max(np.abs(a - b)))
                                for a, b in zip(flat(g1["trainable"]), flat(g4["trainable"])))
print("RESULT " + json.dumps(result))
"""


def test_lora_leaves_follow_their_kernels_rule():
  from jaxslm.train.parallel import logical_axes, spec_for
  P = __import__("jax").sharding.PartitionSpec
  kernel = "layers_0/attn/q_proj/kernel"
  assert logical_axes(kernel, 2) == ("embed", "heads")
  # In a LoraWeight (the frozen tree): base w, adapter a[i] [in, r], b[i] [r, out].
  assert logical_axes(f"{kernel}/w", 2) == ("embed", "heads")
  assert logical_axes(f"{kernel}/a/0", 2) == ("embed", None)
  assert logical_axes(f"{kernel}/b/1", 2) == (None, "heads")
  # In the trainable tree of lora.split, and in optimizer moments over it.
  assert logical_axes(f"{kernel}/a0", 2) == ("embed", None)
  assert logical_axes("0/mu/layers_1/mlp/down_proj/kernel/b0", 2) == (None, "embed")
  # NF4 codes and scales (1-D), unknown kernels: replicated.
  assert logical_axes(f"{kernel}/w/codes_n", 1) == (None,)
  assert logical_axes("head/kernel/a0", 2) == (None, None)
  mesh = type("M", (), {"shape": {"data": 1, "fsdp": 2}})()
  assert spec_for(f"{kernel}/a0", (64, 4), mesh) == P("fsdp", None)
  assert spec_for("layers_0/attn/o_proj/kernel/b0", (4, 64), mesh) == P(None, "fsdp")


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("fsdp")
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAXSLM_")}
  env.update(JAX_PLATFORMS="cpu", JAXSLM_CACHE=str(tmp / "token_cache"),
             XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                       "--xla_backend_optimization_level=0")
  res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp), str(ROOT / "tests"), str(ROOT)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
  assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
  print("\n".join(x for x in res.stdout.splitlines() if x.startswith("Memory per device")))
  line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):]), res.stdout


def test_lora_finetuning_with_fsdp_matches_data_parallel_and_resumes_resharded(fsdp_runs):
  result, out = fsdp_runs
  assert "mesh {'data': 1, 'fsdp': 4}" in out and "mesh {'data': 2, 'fsdp': 2}" in out
  rows_w, rows_a, d_model = result["sft_shards"]
  assert rows_w == rows_a == d_model // 4, "the frozen kernel and its adapter a are split 4-way"
  one, fsdp = ({int(s): v for s, v in x.items()} for x in result["sft_loss"])
  assert sorted(one) == sorted(fsdp) == [1, 2, 3]
  np.testing.assert_allclose([fsdp[s] for s in (1, 2, 3)], [one[s] for s in (1, 2, 3)],
                             rtol=RTOL, atol=ATOL)
  assert result["sft_b_max"] > 0 and result["sft_param_diff"] < 1e-5, result
  print(f"LoRA fine-tuning fsdp 4->2 vs 1: max |loss diff| "
        f"{max(abs(one[s] - fsdp[s]) for s in one):.2e}, params {result['sft_param_diff']:.2e}")


def test_grpo_with_fsdp_matches_data_parallel(fsdp_runs):
  result, out = fsdp_runs
  assert "rollout params" in out   # the gathered copy the sampler uses is counted
  size, shard = result["grpo_shards"]
  assert shard == size // 4
  one, four = result["grpo"]
  assert len(one) == len(four) == 2
  assert any(r["reward_std"] > 0 for r in one) and any(r["grad_norm"] > 0 for r in one)
  for r1, r4 in zip(one, four):
    # The same completions: sampled from the same (gathered) weights with the same seeds.
    assert r1["reward_mean"] == r4["reward_mean"] and r1["completion_len"] == r4["completion_len"]
    for k in r1:
      np.testing.assert_allclose(r4[k], r1[k], rtol=RTOL, atol=ATOL, err_msg=k)
  assert result["grpo_param_diff"] < 1e-5, result
  print(f"GRPO fsdp 4 vs 1: max |loss diff| "
        f"{max(abs(a['loss'] - b['loss']) for a, b in zip(one, four)):.2e}, "
        f"params {result['grpo_param_diff']:.2e}; {one}")
