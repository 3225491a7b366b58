"""Run configuration: `ml_collections.ConfigDict` built in Python files.

A config file `configs/NAME.py` defines `get_config()` and starts from
`base_config()` (shared defaults), so presets never copy each other. Any field
can be overridden on the command line: `--config.train.steps=100`.
"""

from __future__ import annotations

import ast
import difflib
import json
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from jaxslm.models.config import ModelConfig
from jaxslm.errors import UserError

ConfigDict = ml_collections.ConfigDict


def model_config(preset: str, **overrides) -> ConfigDict:
  """A model section holding every `ModelConfig` field of a preset."""
  return ConfigDict(ModelConfig.preset(preset, **overrides).to_dict())


def _on_cpu() -> bool:
  import jax
  return jax.default_backend() == "cpu"


def base_config() -> ConfigDict:
  """Defaults shared by every pretraining config (the offline default run)."""
  c = ConfigDict()
  # On CPU the default run computes in fp32: for this small model it ran 1.7x
  # faster than bf16 on our 2-core machines (6.8k vs 4.0k tokens/s; for the
  # larger slm26m, bf16 was 1.1x faster there). GPUs/TPUs use bf16.
  c.model = model_config("small", dtype="float32" if _on_cpu() else "bfloat16")
  c.tokenizer = ConfigDict(dict(
      name="train",          # "gpt2" / "r50k_base" / other tiktoken name / path to a .model / "train"
      vocab_size=1024,       # "train": SentencePiece vocabulary size
      model_type="bpe",      # "train": "bpe" or "unigram"
      train_documents=5000,  # "train": documents of the corpus used to train it
  ))
  c.data = ConfigDict(dict(
      source="synthetic", path="", text_field="text",
      hf_name="Skylion007/openwebtext", hf_config="", hf_split="train", hf_revision="",
      streaming=True,
      max_documents=0, synthetic_documents=20000, synthetic_seed=0, synthetic_max_steps=4,
      synthetic_format="gsm8k",  # "gsm8k" (Question/Answer, <<expr=value>>) or "react" (agent traces)
      val_fraction=0.01,     # document i is held out when i % round(1/val_fraction) == 0
      cache_dir="",          # token cache; "" = $JAXSLM_CACHE or ~/.cache/jaxslm
  ))
  c.train = ConfigDict(dict(
      seed=0,
      steps=500,
      batch_size=16,          # global batch, in sequences
      grad_accum=1,           # micro-batches per step (batch_size must divide evenly)
      seq_len=128,
      lr=3e-3,                # peak learning rate
      min_lr=3e-4,            # cosine decays to this
      warmup_steps=50,
      decay_steps=0,          # 0 means train.steps
      b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=0.1,       # not applied to norms, biases
      grad_clip=1.0,
      eval_every=100, eval_batches=4,
      log_every=10,
      checkpoint_every=100, keep_checkpoints=3, async_checkpoint=True,
      peak_flops=0.0,         # per device, for MFU; 0 = look up (GPU/TPU) or measure (CPU)
      sample_prompts=("Question: Tom has 3 boxes of 12 apples.",),
      sample_tokens=96,
  ))
  c.mesh = ConfigDict(dict(data=-1, fsdp=1))  # -1: all remaining devices
  # Optional mirrors of metrics.jsonl (jaxslm.train.tracking): TensorBoard event files in
  # <workdir>/tensorboard (tensorboardX), a Weights & Biases run (wandb installed).
  c.tracking = ConfigDict(dict(tensorboard=False, wandb_project="", wandb_mode="online"))
  return c


def openwebtext_config(preset: str, *, max_documents: int) -> ConfigDict:
  """`base_config()` with a model preset, the GPT-2 vocabulary (r50k_base) and
  OpenWebText streamed through `datasets`: the shared base of the OWT configs."""
  c = base_config()
  c.model = model_config(preset)
  c.tokenizer.name = "r50k_base"
  c.data.update(source="hf", hf_name="Skylion007/openwebtext", streaming=True,
                max_documents=max_documents, val_fraction=0.005)
  return c


def load_config(path: str | os.PathLike) -> ConfigDict:
  """Import `get_config()` from a Python config file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} does not exist; pass --config configs/NAME.py.")
  spec = importlib.util.spec_from_file_location(f"jaxslm_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UserError(f"Config file {path!r} defines no get_config() function.")
  return module.get_config()


def _parse_value(text: str, current: Any, key: str) -> Any:
  if isinstance(current, bool):
    low = text.lower()
    if low in ("1", "true", "yes"):
      return True
    if low in ("0", "false", "no"):
      return False
    raise UserError(f"--config.{key}={text!r}: expected a boolean (true/false).")
  if isinstance(current, (int, float)) and not isinstance(current, bool):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      if isinstance(current, int) and isinstance(value, float) and not value.is_integer():
        raise UserError(f"--config.{key}={text!r}: expected an integer.")
      return type(current)(value)
    raise UserError(f"--config.{key}={text!r}: expected a {type(current).__name__}.")
  if isinstance(current, str):
    return text
  try:  # tuples, lists, None
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, (tuple, list)):
    if isinstance(value, str):
      value = (value,)  # --config.train.sample_prompts=Hello
    if not isinstance(value, (tuple, list)):
      raise UserError(f"--config.{key}={text!r}: expected a tuple, e.g. \"('a', 'b')\".")
    return tuple(value)
  return value


def set_field(config: ConfigDict, dotted: str, text: str) -> None:
  """Set `a.b.c` from its command-line text, checking that the field exists."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ConfigDict) or part not in node:
      where = ".".join(parts[:i]) or "config"
      valid = sorted(node.keys()) if isinstance(node, ConfigDict) else []
      close = difflib.get_close_matches(part, valid, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise UserError(f"Unknown config field {dotted!r}: {where} has no field {part!r}.{hint} "
                       f"Valid fields of {where}: {', '.join(valid)}.")
    if i < len(parts) - 1:
      node = node[part]
  with node.unlocked():
    node[parts[-1]] = _parse_value(text, node[parts[-1]], dotted)


def parse_args(argv: Sequence[str], default_config: str | None = None,
               extra_flags: Sequence[str] = ("resume",),
               base: ConfigDict | None = None) -> tuple[ConfigDict, dict[str, Any]]:
  """Parse `[--config FILE] [--config.F=V ...] [--workdir DIR] [--FLAG]`.

  The config is FILE's, else `base` (e.g. a resumed run's saved config), else
  `base_config()`; overrides apply on top. Returns (config, options) where
  options holds `workdir`, `config_path` (None if not given) and each flag.
  """
  args = list(argv)
  options: dict[str, Any] = {"workdir": None, "config_path": None,
                             **{f: False for f in extra_flags}}
  overrides, config_path = [], default_config
  i = 0
  while i < len(args):
    arg = args[i]
    name, eq, value = arg.partition("=")
    needs_value = name in ("--config", "--workdir") or name.startswith("--config.")
    if needs_value and not eq:
      if i + 1 >= len(args):
        raise UserError(f"{name} needs a value: {name}=VALUE.")
      value, i = args[i + 1], i + 1
    if name == "--config":
      config_path = options["config_path"] = value
    elif name.startswith("--config."):
      overrides.append((name[len("--config."):], value))
    elif name == "--workdir":
      options["workdir"] = value
    elif name.lstrip("-") in extra_flags and name.startswith("--") and not eq:
      options[name[2:]] = True
    else:
      known = ["--config FILE", "--config.FIELD=VALUE", "--workdir DIR"] + [f"--{f}" for f in extra_flags]
      raise UserError(f"Unknown argument {arg!r}; expected {', '.join(known)}.")
    i += 1
  if config_path:
    config = load_config(config_path)
  else:
    config = ConfigDict(base.to_dict()) if base is not None else base_config()
  for dotted, value in overrides:
    set_field(config, dotted, value)
  return config, options


DISTRIBUTED_FLAGS = {"--coordinator": "coordinator", "--num-processes": "num_processes",
                     "--process-id": "process_id"}
DISTRIBUTED_HELP = """\
Multi-host: --coordinator HOST:PORT --num-processes N --process-id I on every process
(or JAXSLM_COORDINATOR, JAXSLM_NUM_PROCESSES, JAXSLM_PROCESS_ID); on a Cloud TPU slice
or a SLURM job of several tasks the processes find each other without them."""


def start_distributed(argv: Sequence[str]) -> list[str]:
  """Take the multi-host flags out of `argv`, join the multi-process run they
  (or the JAXSLM_* variables, or the cluster) describe, and return the rest.

  Launchers call this first: a multi-process run must start before anything
  asks JAX for a device, and the config defaults do (`_on_cpu`)."""
  from jaxslm.train import distributed
  args, rest, values = list(argv), [], {}
  i = 0
  while i < len(args):
    name, eq, value = args[i].partition("=")
    if name in DISTRIBUTED_FLAGS:
      if not eq:
        if i + 1 >= len(args) or args[i + 1].startswith("--"):
          raise UserError(f"{name} needs a value: {name}=VALUE.")
        value, i = args[i + 1], i + 1
      values[DISTRIBUTED_FLAGS[name]] = value
    else:
      rest.append(args[i])
    i += 1
  distributed.initialize(**values)
  return rest


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
  return out


def config_changes(saved: dict, current: dict) -> list[str]:
  """["a.b: old -> new", ...] for every dotted field that differs."""
  a, b = _flatten(saved), _flatten(json.loads(json.dumps(current)))
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


def build_model_config(config: ConfigDict) -> ModelConfig:
  return ModelConfig.from_dict(config.model.to_dict())


def finetune_config(method: str = "lora") -> ConfigDict:
  """Defaults shared by the fine-tuning configs (`launch/finetune.py`).

  The base model comes from `init_from` (any checkpoint `jaxslm.load` opens);
  its architecture and tokenizer are the checkpoint's. LoRA defaults are the
  Phi-2 study's: r=8, alpha=16, dropout 0.1, no bias, on attention q and v.
  """
  c = ConfigDict()
  c.method = method           # lora | qlora | full | stacked
  c.init_from = "runs/slm26m_owt"  # the paper's 26M preset, pretrained by configs/slm26m_owt.py
  c.stack_from = ""           # stacked: the first stage's workdir (its adapters/)
  c.model_dtype = "float32" if _on_cpu() else "bfloat16"   # compute dtype; "" = the base's
  c.lora = ConfigDict(dict(rank=8, alpha=16.0, dropout=0.1, targets="qv", rslora=False))
  c.qlora = ConfigDict(dict(targets=r"_proj/kernel$", block_size=64, double_quant=True))
  c.data = ConfigDict(dict(
      source="gsm8k",         # "gsm8k", "synthetic" (jaxslm.data.synthetic) or "instructions"
                              # (any local .jsonl/.json or hub dataset)
      path="",                # GSM8K directory (e.g. ../shared/data/gsm8k) or instruction data
      synthetic_problems=5000, synthetic_seed=0, synthetic_max_steps=4,   # source "synthetic"
      synthetic_format="text",  # text | calculator (<<expr=value>>, evaluated with the hook)
                                # | agent (Thought/Action/Observation traces, "react" prompts)
      config="main", split="train",
      template="qa",          # jaxslm.data.templates: qa, q_a, cot, answer-is, final-only, ...
      keep_annotations=True,  # keep GSM8K's <<expr=value>> calculator annotations
      mask_prompt=True,       # prompt tokens contribute nothing to the loss
      packing=True,           # pack examples into rows (never split one); False: one per row
      val_examples=200,       # held out from the training data for the validation loss
      prompt_field="instruction", target_field="output", input_field="input",
  ))
  c.train = ConfigDict(dict(
      seed=0, steps=500, batch_size=16, seq_len=256,
      grad_accum=1,           # micro-batches per update (same update, 1/A of the activations)
      lr=2e-4 if method != "full" else 5e-5, min_lr=2e-5 if method != "full" else 5e-6,
      warmup_steps=20, decay_steps=0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      grad_clip=1.0, log_every=10, eval_every=100, checkpoint_every=100, keep_checkpoints=2,
  ))
  # Data parallel over every device (-1: all); fsdp > 1 also splits the base, the
  # trainable tree and the optimizer state over that many devices.
  c.mesh = ConfigDict(dict(data=-1, fsdp=1))
  c.eval = ConfigDict(dict(
      problems=100,           # GSM8K test problems (synthetic source: held-out synthetic
                              # problems) for exact match at each evaluation (0: off)
      split="test", path="", seed=1234, max_new_tokens=256, batch_size=32, rouge=True,
  ))
  # Optional mirrors of metrics.jsonl (jaxslm.train.tracking): TensorBoard event files in
  # <workdir>/tensorboard (tensorboardX), a Weights & Biases run (wandb installed).
  c.tracking = ConfigDict(dict(tensorboard=False, wandb_project="", wandb_mode="online"))
  return c


def grpo_config(method: str = "lora") -> ConfigDict:
  """Defaults of GRPO (`launch/grpo.py`): the GRPO study's settings (G = 4 at
  temperatures 0.6/0.8/1.0/1.2, ε(t) = 0.2·exp(−t/τ) + 0.1, β adapted towards
  a KL target, reference refreshed every 100 steps, AdamW β = (0.9, 0.99),
  LR 5e-6 cosine with 10% warmup, weight decay 0.1, clipping 1.0, rewards
  0.2·format + 0.3·process + 0.5·accuracy) and LoRA during RL as in Tina ("Tiny
  Reasoning Models via LoRA": rank 32,
  alpha 128, dropout 0.05 on every projection)."""
  c = ConfigDict()
  c.method = method             # lora (frozen base + adapters; reference = adapters off) | full
  c.init_from = ""              # any checkpoint jaxslm.load opens (a fine-tuning workdir too)
  c.model_dtype = "float32" if _on_cpu() else "bfloat16"
  c.lora = ConfigDict(dict(rank=32, alpha=128.0, dropout=0.05, targets="all", rslora=False))
  c.data = ConfigDict(dict(
      source="gsm8k",           # "gsm8k" or "synthetic" (jaxslm.data.synthetic)
      path="",                  # GSM8K directory or .jsonl (e.g. ../shared/data/gsm8k); "" = hub
      config="main", split="train", eval_split="test",
      train_problems=0,         # prompts in the pool (0: the whole split; synthetic: 5000)
      synthetic_seed=0, synthetic_max_steps=4,
      template="structured",    # jaxslm.data.templates; the rewards score <reasoning>/<solution>
      prompt_budget=256,        # longest prompt, in tokens
      too_long="truncate",      # a longer prompt: "truncate" (keep its end, counted) | "refuse"
  ))
  c.grpo = ConfigDict(dict(
      G=4, temperatures=(0.6, 0.8, 1.0, 1.2), top_p=1.0,
      prompts_per_step=8, max_new_tokens=256,
      mu=1,                     # optimizer passes per batch of rollouts
      grad_accum=1,             # micro-batches of the learning pass (whole groups each; their
                                # gradients summed, the same update in a fraction of the memory)
      adv_norm="group",         # group | batch | none (Dr.GRPO)
      aggregation="sequence",   # sequence (GRPO) | token_sum (Dr.GRPO: sum / (N * norm_tokens))
                                # | token_mean (DAPO: sum over the batch's tokens / their count)
      kl_ratio_weighted=False,  # KL term per token weighted by the importance ratio r
      norm_tokens=0,            # token_sum's per-row constant; 0 = max_new_tokens
      eps0=0.2, eps_min=0.1, eps_tau=500.0,   # eps(t) = eps0*exp(-t/tau) + eps_min; tau 0: eps0
      beta=0.04, kl_target=0.02, beta_factor=1.5,   # kl_target 0: constant beta
      ref_update_every=100,     # refresh the reference every K steps (0: never)
      # Tools inside the rollout: none | calculator (the sampler writes each <<expr= value)
      # | agent (Thought / Action / Observation with the calculator; data.template=react and
      # rewards.extractor=final-answer). Tool tokens are context, never learned.
      tools="none",
      agent_max_steps=8,        # agent rounds per episode; max_new_tokens covers the episode
      max_tool_tokens=32,       # a tool output longer than this is cut (and counted)
      # Rollouts from an int8 copy of the policy (adapters merged first): none | int8 |
      # int8-dynamic (jaxslm.quant). The learning pass stays in float; its first pass takes
      # the sampler's log-probabilities as the old policy's, so the importance ratio
      # corrects for the difference.
      rollout_quantize="none",
      # KV-cache slots (rows x length) per sampler call: a step's rollouts that would
      # need more run in several calls. -1: a quarter of the device's free memory
      # (jaxslm.sampling.batching); 0: one call.
      rollout_token_budget=-1,
  ))
  c.rewards = ConfigDict(dict(names=("format", "process", "accuracy"), weights=(0.2, 0.3, 0.5),
                              extractor="solution"))   # names: built-ins or "module:function"
  c.train = ConfigDict(dict(
      seed=0, steps=200, lr=5e-6, min_lr=0.0, warmup_ratio=0.1, b1=0.9, b2=0.99, eps=1e-8,
      weight_decay=0.1, grad_clip=1.0, log_every=1, checkpoint_every=50, keep_checkpoints=2))
  # Held-out problems scored greedily; with samples k > 0 also pass@1 at `temperature`,
  # averaged over k completions per problem (the same seeds at every evaluation).
  # tools: the tool modes to evaluate in, comma-separated ("" = grpo.tools, and none too
  # when that uses a tool); the first writes eval_accuracy, the others eval_<mode>_accuracy.
  c.eval = ConfigDict(dict(problems=200, every=50, max_new_tokens=256, batch_size=64,
                           samples=0, temperature=1.0, tools=""))
  c.mesh = ConfigDict(dict(data=-1, fsdp=1))   # as in fine-tuning
  # Optional mirrors of metrics.jsonl (jaxslm.train.tracking): TensorBoard event files in
  # <workdir>/tensorboard (tensorboardX), a Weights & Biases run (wandb installed).
  c.tracking = ConfigDict(dict(tensorboard=False, wandb_project="", wandb_mode="online"))
  return c


def launch(argv: Sequence[str], doc: str, run, base: ConfigDict | None = None, *,
           default_workdir, what: str, resume_needs_checkpoint: bool = True,
           next_steps=None) -> int:
  """The body of every training launcher (pretraining, fine-tuning, GRPO):
  --help, multi-host start-up, config parsing, --resume with the run's saved
  config (unless --config is given), exit codes 0 ok / 1 diverged / 2 bad
  input / 130 interrupted (saved). `default_workdir(config)` names the
  workdir when --workdir is not given. `resume_needs_checkpoint`: --resume on
  a workdir without a checkpoint is an error (else it starts the run, as a
  preemptible job restarted with the same command does). `next_steps(config,
  workdir)` is printed after a run that finished: where its outputs are and
  the natural next command."""
  from jaxslm.errors import TrainingDiverged, report
  if any(a in ("-h", "--help") for a in argv):
    print(doc + "\n" + DISTRIBUTED_HELP)
    return 0
  try:
    argv = start_distributed(argv)   # first: before anything asks JAX for a device
    config, options = parse_args(argv, base=base)
    workdir = options["workdir"] or default_workdir(config)
    if options["resume"]:
      meta = newest_readable_meta(workdir)
      if meta is None:
        if resume_needs_checkpoint:
          raise UserError(f"--resume: {workdir!r} holds no {what} checkpoint to continue; "
                          "check --workdir, or drop --resume to start a new run.") from None
      if meta is not None and not options["config_path"]:
        config, _ = parse_args(argv, base=ConfigDict(meta["config"]))
    show_config(config, base if base is not None else base_config(), options["config_path"],
                workdir)
    result = run(config, workdir, resume=options["resume"])
  except (UserError, FileNotFoundError, TrainingDiverged) as e:
    return report(e, 1 if isinstance(e, TrainingDiverged) else 2)
  if result["interrupted"]:
    return 130
  if next_steps is not None:
    import jax
    if jax.process_index() == 0:
      print(next_steps(config, workdir), flush=True)
  return 0


launch_from_checkpoint = launch   # the earlier name


def newest_readable_meta(workdir: str) -> dict | None:
  """The meta of the newest step in `workdir` that reads (a damaged newer one is
  reported, and set aside, by the run itself), or None when there is none."""
  from jaxslm import checkpoint as ckpt
  from jaxslm import paths
  directory = ckpt.checkpoint_dir(workdir)
  for step in reversed(ckpt.step_numbers(directory)):
    try:
      return ckpt.read_step_meta(paths.join(directory, str(step)))
    except ckpt.DamagedCheckpoint:
      continue
  return None


def show_config(config: ConfigDict, defaults: ConfigDict, config_path: str | None,
                workdir: str) -> None:
  """One line per field that differs from the defaults (the whole config goes
  to <workdir>/config.json when the run starts)."""
  import jax
  if jax.process_index() != 0:
    return
  changes = config_changes(defaults.to_dict(), json.loads(config.to_json_best_effort()))
  head = f"Config: {config_path or 'the defaults'}"
  print(f"{head}; {len(changes)} field(s) differ from the defaults"
        f"{':' if changes else ''} (all fields: {workdir}/config.json)", flush=True)
  for c in changes:
    print(f"  {c}", flush=True)
