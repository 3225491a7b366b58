"""GRPO throughput of Hugging Face TRL's `GRPOTrainer` on a CPU, the baseline for jaxslm's GRPO.

    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken_cache \\
        python benchmarks/grpo_model.py --preset slm26m --out runs/bench_grpo_model
    python benchmarks/grpo_trl.py --model-dir runs/bench_grpo_model \\
        --prompts-per-step 4 --G 4 --max-prompt-tokens 64 --max-new-tokens 64 --steps 4 \\
        --wait-idle 600 --out benchmarks/results/grpo_trl_cpu.json
    python benchmarks/grpo_trl.py --model-dir runs/bench_grpo_model \\
        --prompts-per-step 4 --G 4 --max-prompt-tokens 64 --max-new-tokens 128 --steps 4 \\
        --wait-idle 900 --out benchmarks/results/grpo_trl_cpu_new128.json

Needs `pip install trl` beside torch and transformers (benchmark-only; the
versions used are written into the JSON). Runs offline on the directory that
`grpo_model.py` writes (random-init slm26m as `GPTNeoXForCausalLM` + a GPT-2
tokenizer), the same one the jaxslm side converts with `hf_to_jaxslm`.

One optimizer step = one GRPO batch: `--prompts-per-step` prompts x `--G`
completions each (per_device_train_batch_size = P*G, gradient accumulation 1,
so generation_batch_size = P*G and steps_per_generation = 1; num_iterations 1,
so no "old" log-probs pass). Per step TRL: generates all P*G completions in one
`model.generate` call (sampling, temperature 1, no top-k/top-p, with
`min_new_tokens = max_new_tokens` so EOS is blocked and every completion is
exactly --max-new-tokens long), decodes them, scores them, runs the frozen
reference model over prompt+completion (beta = 0.04 > 0), and does one policy
forward+backward, grad-norm clipping (1.0) and an AdamW step. fp32, no
gradient checkpointing (TRL's default is on), no bf16 (TRL's default is on),
no vLLM, no logging/saving/eval, torch threads = --threads (2).

Prompts: `grpo_model.bench_prompts`, "Question: {q}\\nAnswer:" for
`SyntheticMath(seed=0).problem(i)` in order (no shuffling; step k gets prompts
kP..kP+P-1), left-truncated to --max-prompt-tokens; TRL left-pads each batch to
its longest prompt. Reward: characters of the decoded completion / 100, a
deterministic stand-in whose cost is negligible (its time is recorded) and
which varies across a group so advantages and gradients are not zero.

Timing (time.perf_counter; torch on CPU is synchronous): step = from one
optimizer step's end to the next (the first step is warm-up, excluded; it is
timed from its start); within it, `generate_s` (the policy's `generate`),
`ref_logprobs_s` (reference-model forwards), `score_other_s` (the rest of TRL's
generate-and-score: tokenizing, decoding, rewards, advantages) and `learn_s` =
step - generate-and-score (policy forward with grad, backward, clipping, AdamW,
trainer bookkeeping). completions/s = P*G / median step time. Each step also
records the CPU cores other processes kept busy meanwhile (from /proc/stat, as
the other benchmarks); `summary.*_clean` use only the timed steps where that was
under 0.2, and `--wait-idle` first waits for an idle CPU.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_model  # noqa: E402  benchmarks/grpo_model.py, beside this file
import pretrain_throughput as common  # noqa: E402  CpuContention, _cpu_name, write_json

BETA = 0.04
REWARD_NOTE = ("reward = len(decoded completion) / 100 (characters): deterministic, negligible "
               "cost, varies within a group")


def parse(argv):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model-dir", default="runs/bench_grpo_model",
                  help="Hugging Face directory written by benchmarks/grpo_model.py")
  ap.add_argument("--prompts-per-step", type=int, default=4)
  ap.add_argument("--G", type=int, default=4, help="completions per prompt (num_generations)")
  ap.add_argument("--max-prompt-tokens", type=int, default=64)
  ap.add_argument("--max-new-tokens", type=int, default=64)
  ap.add_argument("--steps", type=int, default=4, help="optimizer steps; the first is warm-up")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--lr", type=float, default=1e-6)
  ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  ap.add_argument("--out", default="benchmarks/results/grpo_trl_cpu.json")
  ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                  help="first wait up to SECONDS for other processes to leave the CPU idle")
  args = ap.parse_args(argv)
  if args.steps < 2:
    ap.error("--steps must be at least 2 (the first is warm-up)")
  if args.G < 2:
    ap.error("--G must be at least 2 (GRPO needs a group)")
  return args


class Timer:
  """Accumulates wall seconds of wrapped calls; `take()` returns and resets them."""

  def __init__(self):
    self.seconds, self.calls = 0.0, 0

  def wrap(self, fn):
    @functools.wraps(fn)
    def timed(*a, **kw):
      t0 = time.perf_counter()
      try:
        return fn(*a, **kw)
      finally:
        self.seconds += time.perf_counter() - t0
        self.calls += 1
    return timed

  def take(self) -> float:
    s, self.seconds, self.calls = self.seconds, 0.0, 0
    return s


def wait_for_idle(limit_s: float, window_s: float = 10.0, threshold: float = 0.2) -> None:
  """Waits until other processes keep fewer than `threshold` cores busy over a
  `window_s` window, or `limit_s` has passed (then goes on, with a note)."""
  t0 = time.perf_counter()
  while True:
    c = common.CpuContention().start()
    time.sleep(window_s)
    busy = c.stop()
    if busy is None or busy < threshold:
      return
    if time.perf_counter() - t0 > limit_s:
      print(f"note: the CPU is still busy ({busy:.2f} cores) after {limit_s:.0f} s; timing anyway",
            flush=True)
      return


def versions() -> dict:
  from importlib.metadata import PackageNotFoundError, version
  out = {"python": platform.python_version()}
  for pkg in ("torch", "transformers", "trl", "accelerate", "tokenizers", "datasets"):
    try:
      out[pkg] = version(pkg)
    except PackageNotFoundError:
      out[pkg] = None
  return out


def main(argv: list[str]) -> int:
  args = parse(argv)
  if args.wait_idle:
    wait_for_idle(args.wait_idle)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  import torch
  torch.set_num_threads(args.threads)
  from datasets import Dataset
  from transformers import AutoTokenizer, TrainerCallback
  from trl import GRPOConfig, GRPOTrainer

  p, g, n_new = args.prompts_per_step, args.G, args.max_new_tokens
  batch = p * g
  tok = AutoTokenizer.from_pretrained(args.model_dir, padding_side="left")
  prompts = grpo_model.bench_prompts(
      p * args.steps, args.max_prompt_tokens,
      lambda t: tok(t, add_special_tokens=False)["input_ids"],
      lambda ids: tok.decode(ids, skip_special_tokens=False))
  dataset = Dataset.from_dict({"prompt": [x["text"] for x in prompts]})

  reward_timer = Timer()

  def length_reward(completions, **_):
    return [len(c) / 100.0 for c in completions]

  out_dir = tempfile.mkdtemp(prefix="grpo_trl_", dir=os.path.join("runs"))
  config = GRPOConfig(
      output_dir=out_dir, seed=args.seed, use_cpu=True, bf16=False, fp16=False,
      model_init_kwargs={"dtype": "float32"},
      per_device_train_batch_size=batch, gradient_accumulation_steps=1,
      num_generations=g, num_iterations=1, max_steps=args.steps,
      max_completion_length=n_new, temperature=1.0, top_p=1.0, top_k=0, min_p=None,
      generation_kwargs={"min_new_tokens": n_new}, use_vllm=False,
      beta=BETA, learning_rate=args.lr, gradient_checkpointing=False, shuffle_dataset=False,
      logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
      disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
      dataloader_pin_memory=False)
  if (config.generation_batch_size, config.steps_per_generation) != (batch, 1):
    raise RuntimeError(f"TRL set generation_batch_size={config.generation_batch_size}, "
                       f"steps_per_generation={config.steps_per_generation}; expected {batch}, 1")

  marks = {"begin": [], "end": []}

  busy = []  # CPU cores other processes kept busy during each step (None: unknown)
  step_contention = None

  class StepMarks(TrainerCallback):
    def on_step_begin(self, *_, **__):
      nonlocal step_contention
      marks["begin"].append(time.perf_counter())
      step_contention = common.CpuContention().start()

    def on_step_end(self, *_, **__):
      marks["end"].append(time.perf_counter())
      busy.append(step_contention.stop())

  t_load = time.perf_counter()
  trainer = GRPOTrainer(model=args.model_dir, reward_funcs=reward_timer.wrap(length_reward),
                        args=config, train_dataset=dataset, processing_class=tok,
                        callbacks=[StepMarks()])
  load_s = time.perf_counter() - t_load
  if trainer.ref_model is None:
    raise RuntimeError("TRL made no reference model; beta must be > 0")
  model = trainer.model

  # Per-step phase timers around TRL's own calls (instance attributes shadow the methods).
  gen_timer, ref_timer, score_timer = Timer(), Timer(), Timer()
  gen_log = []
  raw_generate = model.generate

  def generate(*a, **kw):
    t0 = time.perf_counter()
    out = raw_generate(*a, **kw)
    gen_timer.seconds += time.perf_counter() - t0
    ids, mask = kw["input_ids"], kw["attention_mask"]
    new = out[:, ids.shape[1]:]
    gen_log.append({"rows": int(ids.shape[0]), "prompt_tokens_padded": int(ids.shape[1]),
                    "prompt_tokens_mean": float(mask.sum(1).float().mean()),
                    "new_tokens_per_row": int(new.shape[1]),
                    "eos_in_completions": int(torch.isin(new, torch.tensor(
                        trainer.eos_token_ids)).sum())})
    return out
  model.generate = generate
  processors = []  # the logits processors generate really applies (first call)
  raw_processors = model._get_logits_processor

  def get_processors(*a, **kw):
    out = raw_processors(*a, **kw)
    if not processors:
      processors.extend(type(x).__name__ for x in out)
    return out
  model._get_logits_processor = get_processors
  trainer.ref_model.forward = ref_timer.wrap(trainer.ref_model.forward)
  trainer._generate_and_score_completions = score_timer.wrap(trainer._generate_and_score_completions)

  gen_cfg = trainer.generation_config
  contention = None

  class Contention(TrainerCallback):
    def on_step_end(self, *_, **__):
      nonlocal contention
      if len(marks["end"]) == 1:
        contention = common.CpuContention().start()

  trainer.add_callback(Contention())
  phases = []

  class Phases(TrainerCallback):
    def on_step_end(self, *_, **__):
      gs, rs, ss = gen_timer.take(), ref_timer.take(), score_timer.take()
      m = trainer._metrics["train"]  # TRL clears these when it logs (at the end of train)
      last = {k: (v[-1] if v else None) for k, v in m.items() if isinstance(v, list)}
      phases.append({"generate_s": gs, "ref_logprobs_s": rs, "generate_and_score_s": ss,
                     "reward_s": reward_timer.take(), "metrics": last})

  trainer.add_callback(Phases())
  print(f"TRL GRPO: {p} prompts x G={g}, {n_new} new tokens, {args.steps} steps "
        f"(1 warm-up), torch threads {torch.get_num_threads()}", flush=True)
  t_train = time.perf_counter()
  trainer.train()
  train_s = time.perf_counter() - t_train
  other_cores = contention.stop() if contention is not None else None

  steps = []
  for i in range(len(marks["end"])):
    begin_end = marks["end"][i] - marks["begin"][i]
    step_s = begin_end if i == 0 else marks["end"][i] - marks["end"][i - 1]
    ph = phases[i]
    metrics = ph["metrics"]
    lengths = {k: metrics[f"completions/{k}"] for k in ("mean_length", "min_length",
                                                            "max_length", "clipped_ratio")}
    gl = gen_log[i]
    steps.append({
        "step": i, "warmup": i == 0, "step_s": step_s, "step_begin_to_end_s": begin_end,
        "other_processes_cpu_cores": busy[i],
        "generate_s": ph["generate_s"], "ref_logprobs_s": ph["ref_logprobs_s"],
        "score_other_s": ph["generate_and_score_s"] - ph["generate_s"] - ph["ref_logprobs_s"],
        "reward_s": ph["reward_s"],
        "learn_s": step_s - ph["generate_and_score_s"],
        "completions": gl["rows"], "prompt_tokens_padded": gl["prompt_tokens_padded"],
        "prompt_tokens_mean": gl["prompt_tokens_mean"],
        "new_tokens_per_completion": gl["new_tokens_per_row"],
        "tokens_generated": round(lengths["mean_length"] * gl["rows"]),
        "eos_in_completions": gl["eos_in_completions"],
        "trl_completion_lengths": lengths,
        "trl_step_time_s": metrics.get("step_time"), "reward_mean": metrics.get("reward"),
        "kl": metrics.get("kl"),
    })
  timed = [s for s in steps if not s["warmup"]]
  # Timed steps during which other processes kept under 0.2 cores busy.
  clean = [s for s in timed if s["other_processes_cpu_cores"] is not None
           and s["other_processes_cpu_cores"] < 0.2]

  def med(key):
    return statistics.median(s[key] for s in timed)
  median_step = med("step_s")
  full_length = all(s["trl_completion_lengths"]["min_length"] == n_new
                    and s["trl_completion_lengths"]["max_length"] == n_new
                    and s["eos_in_completions"] == 0 for s in steps)
  summary = {
      "median_step_s": median_step, "min_step_s": min(s["step_s"] for s in timed),
      "completions_per_s": batch / median_step,
      "generated_tokens_per_s": statistics.median(s["tokens_generated"] for s in timed) / median_step,
      "median_generate_s": med("generate_s"), "median_ref_logprobs_s": med("ref_logprobs_s"),
      "median_score_other_s": med("score_other_s"), "median_learn_s": med("learn_s"),
      "generate_fraction": med("generate_s") / median_step,
      "clean_steps": [s["step"] for s in clean],
      "median_step_s_clean": statistics.median(s["step_s"] for s in clean) if clean else None,
      "completions_per_s_clean": (batch / statistics.median(s["step_s"] for s in clean)
                                  if clean else None),
      "max_other_processes_cpu_cores_timed_steps": max(
          (s["other_processes_cpu_cores"] for s in timed
           if s["other_processes_cpu_cores"] is not None), default=None),
      "all_completions_full_length": full_length,
      "first_step_s": steps[0]["step_s"], "model_load_s": load_s, "train_call_s": train_s,
      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
  }
  with open(os.path.join(args.model_dir, "config.json")) as f:
    hf_cfg = json.load(f)
  result = {
      "implementation": "trl.GRPOTrainer",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join(shlex.quote(a) for a in
                          ["python", os.path.relpath(sys.argv[0]) if sys.argv[0] else "-", *argv]),
      "versions": versions(),
      "host": {"processor": common._cpu_name(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(),
               "torch_interop_threads": torch.get_num_interop_threads(),
               "loadavg_1min_at_end": common.loadavg()},
      "other_processes_cpu_cores": other_cores,
      "settings": {"prompts_per_step": p, "G": g, "completions_per_step": batch,
                   "max_prompt_tokens": args.max_prompt_tokens, "max_new_tokens": n_new,
                   "steps": args.steps, "warmup_steps": 1, "seed": args.seed, "lr": args.lr,
                   "beta": BETA, "temperature": 1.0, "top_k": None, "top_p": None,
                   "dtype": "float32", "prompts_truncated": sum(x["truncated"] for x in prompts),
                   "reward": REWARD_NOTE},
      "model": {"dir": os.path.abspath(args.model_dir), "model_type": hf_cfg["model_type"],
                "architecture": type(model).__name__,
                "params": sum(t.numel() for t in model.parameters()),
                "attn_implementation": model.config._attn_implementation,
                "dtype": str(model.dtype), "ref_model": type(trainer.ref_model).__name__},
      "trl_config": {k: getattr(config, k) for k in (
          "per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_size",
          "steps_per_generation", "num_generations", "num_iterations", "max_completion_length",
          "beta", "loss_type", "scale_rewards", "epsilon", "importance_sampling_level",
          "gradient_checkpointing", "bf16", "use_vllm", "max_grad_norm", "weight_decay",
          "lr_scheduler_type", "disable_dropout", "shuffle_dataset", "mask_truncated_completions")},
      "optimizer": {"optim": str(config.optim), "class": type(trainer.optimizer).__name__},
      "generation_config": {k: getattr(gen_cfg, k, None) for k in (
          "do_sample", "max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p",
          "min_p", "repetition_penalty", "eos_token_id", "pad_token_id", "cache_implementation")}
      | {"logits_processors_applied": processors},
      "steps": steps,
      "summary": summary,
  }
  print(f"median step {median_step:.2f} s (min {summary['min_step_s']:.2f}): "
        f"{summary['completions_per_s']:.2f} completions/s, "
        f"{summary['generated_tokens_per_s']:.1f} generated tokens/s; generate "
        f"{summary['median_generate_s']:.2f} s, ref {summary['median_ref_logprobs_s']:.2f} s, "
        f"learn {summary['median_learn_s']:.2f} s; first step {steps[0]['step_s']:.1f} s; "
        f"full-length completions: {full_length}", flush=True)
  if clean:
    print(f"steps with an idle CPU otherwise ({len(clean)} of {len(timed)}): median "
          f"{summary['median_step_s_clean']:.2f} s, {summary['completions_per_s_clean']:.2f} "
          "completions/s", flush=True)
  worst = summary["max_other_processes_cpu_cores_timed_steps"]
  if worst is not None and worst > 0.2:
    print(f"warning: other processes kept up to {worst:.2f} CPU cores busy during a timed step "
          f"({other_cores} on average); the timing is skewed", flush=True)
  common.write_json(result, args.out)
  shutil.rmtree(out_dir, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
