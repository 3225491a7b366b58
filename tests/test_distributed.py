"""Multi-host on one machine: two processes on localhost (gloo collectives), each
with 2 fake CPU devices, against one process with 4, running the real launchers
(`tests/_multiprocess_worker.py`):

  pretraining with mesh data=2 x fsdp=2 (FSDP across the two processes),
  stopped at step 2 and resumed by two fresh processes,
  GRPO (each process samples its own prompts), with fsdp=2 on two processes
  against fsdp=1 on one (the policy gathered across processes for sampling).

Both layouts do the same arithmetic except for the order of cross-device sums,
so losses and parameters agree to float32 rounding: RTOL/ATOL below. Plus the
start-up rules of `jaxslm.train.distributed` (explicit, detected, refused).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxslm
from jaxslm.config import start_distributed
from jaxslm.errors import UserError
from jaxslm.train import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_multiprocess_worker.py"
STEPS, STOP_AT = 4, 2
RTOL, ATOL = 1e-5, 1e-6     # float32; sums over devices are ordered differently
TIMEOUT = 240


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def spawn(jobs, log_path, *, devices, process_id=None, num_processes=None, port=None):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAXSLM_")}
  # LLVM optimization off: these tiny steps compile about twice as fast (compilation
  # is most of the test's time) and both layouts run the same code.
  env.update(JAX_PLATFORMS="cpu", JAXSLM_CACHE=str(log_path.parent / "token_cache"),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0")
  # A run repeated with the same shapes (stopped, then resumed) compiles nothing the second time.
  env.update(JAX_COMPILATION_CACHE_DIR=str(log_path.parent / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  if process_id is not None:
    env.update(JAXSLM_COORDINATOR=f"localhost:{port}", JAXSLM_NUM_PROCESSES=str(num_processes),
               JAXSLM_PROCESS_ID=str(process_id))
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, str(WORKER), json.dumps(jobs)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
  proc.log_path = log_path
  return proc


def two_processes(jobs, tmp, name, *, flags=False):
  """Two workers joined through the JAXSLM_* variables, or (`flags`) through the
  launchers' --coordinator/--num-processes/--process-id flags on the first job."""
  port = free_port()
  if not flags:
    return [spawn(jobs, tmp / f"{name}_p{i}.log", devices=2, process_id=i, num_processes=2,
                  port=port) for i in range(2)]
  return [spawn([jobs[0] + ["--coordinator", f"localhost:{port}", "--num-processes", "2",
                            f"--process-id={i}"], *jobs[1:]], tmp / f"{name}_p{i}.log", devices=2)
          for i in range(2)]


def wait(procs, deadline):
  """Wait for every process; as soon as one fails (or time runs out) kill the
  rest, so a peer left waiting in a collective does not hang the test, and
  show every log."""
  failed = None
  while failed is None and any(p.poll() is None for p in procs):
    bad = [p for p in procs if p.poll()]
    if bad:
      failed = f"exit code {bad[0].returncode} ({bad[0].log_path.name})"
    elif time.time() > deadline:
      failed = f"timed out after {TIMEOUT}s"
    else:
      time.sleep(0.2)
  bad = [p for p in procs if p.poll()]
  failed = failed or (f"exit code {bad[0].returncode} ({bad[0].log_path.name})" if bad else None)
  if failed:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    logs = "\n".join(f"===== {p.log_path.name} (exit {p.poll()}) =====\n"
                     + pathlib.Path(p.log_path).read_text()[-6000:] for p in procs)
    raise AssertionError(f"worker {failed}:\n{logs}")
  return [pathlib.Path(p.log_path).read_text() for p in procs]


# ------------------------------------------------------------------ the runs
def pretrain_args(workdir, steps, *extra):
  return ["pretrain", "--config", str(ROOT / "configs" / "tiny.py"), "--workdir", str(workdir),
          "--config.model.d_model=32", "--config.model.n_heads=2", "--config.model.n_kv_heads=1",
          "--config.model.d_ff=64", "--config.mesh.fsdp=2",
          "--config.data.synthetic_documents=400", "--config.tokenizer.train_documents=300",
          f"--config.train.steps={steps}", f"--config.train.decay_steps={STEPS}",
          "--config.train.warmup_steps=1", "--config.train.batch_size=8",
          "--config.train.seq_len=32", f"--config.train.eval_every={STEPS}",
          "--config.train.eval_batches=1", f"--config.train.checkpoint_every={STOP_AT}",
          "--config.train.log_every=1", "--config.train.sample_prompts=()",
          "--config.train.async_checkpoint=false", "--config.train.peak_flops=1e11", *extra]


def grpo_args(workdir, base, *extra):
  return [*_grpo_args(workdir, base), *extra]


def _grpo_args(workdir, base):
  return ["grpo", "--config", str(ROOT / "configs" / "grpo_synthetic.py"), "--workdir",
          str(workdir), f"--config.init_from={base}", "--config.model_dtype=float32",
          "--config.data.synthetic_max_steps=1", "--config.data.train_problems=32",
          "--config.data.prompt_budget=96", "--config.grpo.prompts_per_step=4",
          "--config.grpo.G=2", "--config.grpo.temperatures=(0.8, 1.2)",
          "--config.grpo.max_new_tokens=16", "--config.lora.rank=4", "--config.lora.alpha=8.0",
          "--config.rewards.names=('format', '_multiprocess_worker:length_reward')",
          "--config.rewards.weights=(0.5, 1.0)",
          f"--config.train.steps={STOP_AT}", "--config.train.checkpoint_every=100",
          "--config.eval.problems=0", "--config.eval.every=0"]


def make_base(root) -> str:
  """A random tiny model with a SentencePiece tokenizer (no warm start: equality
  between layouts needs no learning)."""
  from jaxslm.checkpoint import save_params
  from jaxslm.data.synthetic import SyntheticMath
  from jaxslm.data.templates import get_template
  from jaxslm.models import ModelConfig, init_params
  from jaxslm.tokenizers import train_sentencepiece
  gen, tmpl = SyntheticMath(0, max_steps=1), get_template("structured")
  docs = [tmpl.prompt(p.question) + tmpl.target(p.answer, str(p.final_answer))
          for p in (gen.problem(i) for i in range(200))]
  tok = train_sentencepiece(docs, vocab_size=512)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, d_model=32, n_heads=2,
                           n_kv_heads=1, d_ff=64, max_seq_len=128, dtype="float32")
  return save_params(str(root / "base"), init_params(cfg, jax.random.PRNGKey(0)),
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Every run, one group of processes at a time (on a 2-core machine a third
  process only slows the pair's collectives): one process with 4 devices
  (pretrain, GRPO); two processes (pretrain to step 2, GRPO); two
  fresh processes resuming the stopped run (joined by the launcher flags)."""
  tmp = tmp_path_factory.mktemp("distributed")
  base = make_base(tmp)
  t0 = time.time()
  deadline = t0 + TIMEOUT
  # The one-process run also samples after training from its FSDP-sharded params.
  single = spawn([pretrain_args(tmp / "one", STEPS, "--config.train.sample_prompts=('Question:',)",
                                "--config.train.sample_tokens=4"),
                  grpo_args(tmp / "grpo_one", base)],
                 tmp / "single.log", devices=4)
  logs = {"one": wait([single], deadline)[0]}
  pair = two_processes([pretrain_args(tmp / "stopped", STOP_AT),
                        grpo_args(tmp / "grpo_two", base, "--config.mesh.fsdp=2")],
                       tmp, "first")
  logs["two"] = wait(pair, deadline)
  resumed = two_processes([pretrain_args(tmp / "stopped", STEPS, "--resume")], tmp, "resume",
                          flags=True)
  logs["resume"] = wait(resumed, deadline)
  print(f"distributed runs took {time.time() - t0:.1f}s")
  return tmp, logs


def records(workdir):
  return [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]


def losses(workdir, key="loss"):
  return {r["step"]: r[key] for r in records(workdir) if r.get(key) is not None}


def max_param_diff(a, b) -> float:
  la, lb = jax.tree.leaves(jaxslm.load(str(a)).params), jax.tree.leaves(jaxslm.load(str(b)).params)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb))


def assert_close_series(a: dict, b: dict) -> float:
  assert sorted(a) == sorted(b), (a, b)
  np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)],
                             rtol=RTOL, atol=ATOL)
  return max(abs(a[s] - b[s]) for s in a)


def test_fsdp_pretraining_on_two_processes_matches_one_process(runs):
  """Two processes run steps 1-2, two fresh ones resume to step 4 (joined by the
  launcher flags): the result equals one process's uninterrupted run."""
  tmp, logs = runs
  p0, p1 = logs["two"]
  assert "mesh {'data': 2, 'fsdp': 2}" in logs["one"] and "--- sample" in logs["one"]
  assert "mesh {'data': 2, 'fsdp': 2}" in p0 and "(2 process(es))" in p0
  assert "Memory per device" in p0 and "Compiled the train step" in p0
  # Only process 0 logs and reports.
  assert "Config:" not in p1 and "Memory per device" not in p1 and "step 0:" not in p1
  out = logs["resume"][0]
  assert f"Resumed from step {STOP_AT}" in out and "(2 process(es))" in out
  steps = [r["step"] for r in records(tmp / "stopped") if "loss" in r]
  assert steps == list(range(1, STEPS + 1)), "a resumed run logs each step once"
  d_loss = assert_close_series(losses(tmp / "stopped"), losses(tmp / "one"))
  one_val = losses(tmp / "one", "val_loss")   # the stopped run also evaluated at its stop
  d_val = assert_close_series({s: v for s, v in losses(tmp / "stopped", "val_loss").items()
                               if s in one_val}, one_val)
  d_param = max_param_diff(tmp / "stopped", tmp / "one")   # FSDP checkpoints, loaded here
  print(f"pretrain 2 processes (stopped, resumed) vs 1: max |loss diff| {d_loss:.2e}, "
        f"val {d_val:.2e}, params {d_param:.2e}")


def test_grpo_on_two_processes_matches_one_process(runs):
  tmp, logs = runs
  assert "mesh {'data': 2, 'fsdp': 2}, rollouts" in logs["two"][0] and "rollout params" in logs["two"][0]
  two, one = records(tmp / "grpo_two"), records(tmp / "grpo_one")
  assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, STOP_AT + 1))
  diffs = {}
  for key in ("reward_mean", "reward_std", "accuracy", "format", "completion_len",
              "zero_signal_frac", "loss", "kl", "grad_norm", "entropy"):
    diffs[key] = assert_close_series({r["step"]: r[key] for r in two},
                                     {r["step"]: r[key] for r in one})
  # The same completions were sampled: the reward statistics agree exactly.
  assert diffs["reward_mean"] == diffs["completion_len"] == 0.0, diffs
  d_param = max_param_diff(tmp / "grpo_two", tmp / "grpo_one")
  # Process 0 alone wrote the outputs; they load as the same model.
  assert (tmp / "grpo_two" / "adapters").is_dir()
  max_param_diff(tmp / "grpo_two" / "export", tmp / "grpo_one" / "export")
  print(f"GRPO 2 processes vs 1: max diffs {diffs}, params {d_param:.2e}")


# ------------------------------------------------------------------ start-up rules
def test_explicit_settings_from_arguments_or_environment():
  env = {"JAXSLM_COORDINATOR": "10.0.0.1:1234", "JAXSLM_NUM_PROCESSES": "4",
         "JAXSLM_PROCESS_ID": "3"}
  assert distributed.explicit_settings(environ=env) == {
      "coordinator": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  got = distributed.explicit_settings(process_id=1, environ=env)   # an argument wins
  assert got["process_id"] == 1
  assert distributed.explicit_settings(environ={}) is None
  assert distributed.explicit_settings(num_processes=1, environ={}) is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(coordinator="h:1"), r"not --num-processes N \(or \$JAXSLM_NUM_PROCESSES\), "
                              r"--process-id I"),
    (dict(coordinator="h:1", num_processes=2), r"not --process-id I \(or \$JAXSLM_PROCESS_ID\)"),
    (dict(num_processes=2, process_id=0), r"not --coordinator HOST:PORT"),
    (dict(process_id=1), "no coordinator"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), r"process-id=2 .* \[0, 2\)"),
    (dict(coordinator="nohost", num_processes=2, process_id=0), "must be HOST:PORT"),
    (dict(coordinator="h:1", num_processes="two", process_id=0), "num-processes='two'"),
])
def test_half_specified_settings_name_what_is_missing(kwargs, match):
  with pytest.raises(UserError, match=match):
    distributed.explicit_settings(**kwargs, environ={})


def test_cluster_detection():
  assert distributed.detected_cluster({}) is None
  assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "Cloud TPU"
  assert distributed.detected_cluster({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert distributed.detected_cluster({"MEGASCALE_NUM_SLICES": "2"}) == "Cloud TPU"
  assert distributed.detected_cluster({}, chips=4) == "Cloud TPU VM"
  assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}) == "SLURM"
  assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2"}) == "SLURM"
  assert distributed.detected_cluster({"OMPI_COMM_WORLD_SIZE": "4"}) == "Open MPI"


def test_launcher_flags_are_taken_out_and_checked(monkeypatch):
  monkeypatch.setattr(distributed, "_state", {})
  for k in ("JAXSLM_COORDINATOR", "JAXSLM_NUM_PROCESSES", "JAXSLM_PROCESS_ID"):
    monkeypatch.delenv(k, raising=False)
  assert start_distributed(["--workdir", "w", "--resume"]) == ["--workdir", "w", "--resume"]
  monkeypatch.setattr(distributed, "_state", {})
  with pytest.raises(UserError, match="--num-processes N"):
    start_distributed(["--coordinator=h:1", "--workdir", "w"])
  with pytest.raises(UserError, match="--process-id needs a value"):
    start_distributed(["--process-id"])
  # Too late: this test process has already started its JAX backend.
  monkeypatch.setattr(distributed, "_state", {})
  jax.devices()
  with pytest.raises(UserError, match="before anything touches a JAX device"):
    start_distributed(["--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"])


def test_each_process_takes_whole_groups_of_the_step():
  from jaxslm.train import grpo_data, parallel
  assert [grpo_data.process_slice(8, p, 2) for p in range(2)] == [range(0, 4), range(4, 8)]
  assert grpo_data.process_slice(8, 0, 1) == range(0, 8)
  with pytest.raises(UserError, match=r"grpo.prompts_per_step=6 .* 4 processes"):
    grpo_data.process_slice(6, 0, 4)
  rows = {"total": np.arange(3.0), "n": np.arange(3)}
  assert parallel.gather_rows(rows) is rows   # one process: nothing to gather
  assert parallel.any_process(True) and not parallel.any_process(False)
