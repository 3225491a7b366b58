"""PyTorch reference for the pretraining-throughput benchmark: the same decoder.

    python benchmarks/torch_reference.py --presets tiny,slm26m,gpt2_124m \
        --batch 8 --seq 256 --steps 10 --warmup 2 --dtype float32 --mode eager,compile \
        --out benchmarks/results/cpu_torch.json

A minimal PyTorch implementation of jaxslm's decoder, written from its
`ModelConfig` presets (so sizes match; the parameter count is asserted equal to
`jaxslm.models.count_params(cfg)["total"]`): token embedding, pre-norm blocks
x + attn(norm(x)), x + mlp(norm(x)) with LayerNorm (scale, bias) or RMSNorm
(scale) computed in float32, q/k/v/o projections (biases per `use_bias`), RoPE
in the rotate-half layout, `F.scaled_dot_product_attention(is_causal=True)`
(GQA via `enable_gqa` where n_kv_heads < n_heads), GELU(tanh) or SwiGLU, a final
norm, and tied embeddings or an untied `lm_head` without bias.

One training step, as jaxslm's: next-token cross entropy on `[B, T+1]` random
tokens, backward, global-norm clipping and AdamW with the hyper-parameters of
`jaxslm.config.base_config().train` (weight decay on matrices only; the lr
stays at train.lr instead of following jaxslm's warmup-cosine schedule, which
changes the losses but not the work done per step). `--dtype bfloat16` runs the
forward under `torch.autocast` (float32 master weights, as jaxslm). Modes:
`eager`, and `compile` (`torch.compile` of the model-and-loss module; its
backward is compiled by AOTAutograd, the optimizer runs eagerly). A mode that
fails (e.g. no C++ compiler for inductor) records its error and the run goes on.

Timing, FLOPs and MFU are those of `pretrain_throughput.py` (median step time
after `--warmup` untimed steps, synchronising the device after each step;
FLOPs/token = 6·N + 12·L·H·T; on a CPU the peak is the measured fp32 matmul
rate, via jaxslm's `peak_flops_per_device`, so both JSONs use one definition).
"""

from __future__ import annotations

import math
import os
import sys
import time

# jaxslm is used here only for configs, parameter counts and the CPU peak:
# keep JAX off the accelerator so it takes none of the memory torch needs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pretrain_throughput as common  # benchmarks/pretrain_throughput.py, beside this file

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("eager", "compile")


class Norm(nn.Module):
  """LayerNorm (scale, bias) or RMSNorm (scale); statistics in float32."""

  def __init__(self, d: int, kind: str, eps: float):
    super().__init__()
    self.kind, self.eps = kind, eps
    self.scale = nn.Parameter(torch.ones(d))
    self.bias = nn.Parameter(torch.zeros(d)) if kind == "layernorm" else None

  def forward(self, x):
    x32 = x.float()
    if self.kind == "layernorm":
      y = F.layer_norm(x32, x32.shape[-1:], self.scale, self.bias, self.eps)
    else:
      y = F.rms_norm(x32, x32.shape[-1:], self.scale, self.eps)
    return y.to(x.dtype)


def rope_tables(seq: int, head_dim: int, theta: float, device):
  """cos, sin [T, H/2] float32 for positions 0..T-1."""
  inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
  angles = torch.arange(seq, device=device).float()[:, None] * inv_freq
  return angles.cos(), angles.sin()


def rope(x_bnth, cos_th, sin_th):
  """Rotate-half RoPE (first half / second half of H), in float32."""
  x32 = x_bnth.float()
  half = x32.shape[-1] // 2
  x1, x2 = x32[..., :half], x32[..., half:]
  out = torch.cat([x1 * cos_th - x2 * sin_th, x2 * cos_th + x1 * sin_th], dim=-1)
  return out.to(x_bnth.dtype)


class Attention(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    self.n, self.k, self.h = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
    d, bias = cfg.d_model, cfg.use_bias
    self.q_proj = nn.Linear(d, self.n * self.h, bias=bias)
    self.k_proj = nn.Linear(d, self.k * self.h, bias=bias)
    self.v_proj = nn.Linear(d, self.k * self.h, bias=bias)
    self.o_proj = nn.Linear(self.n * self.h, d, bias=bias)
    self.rope = cfg.position == "rope"

  def forward(self, x_btd, cos, sin):
    b, t, _ = x_btd.shape
    q = self.q_proj(x_btd).view(b, t, self.n, self.h).transpose(1, 2)
    k = self.k_proj(x_btd).view(b, t, self.k, self.h).transpose(1, 2)
    v = self.v_proj(x_btd).view(b, t, self.k, self.h).transpose(1, 2)
    if self.rope:
      q, k = rope(q, cos, sin), rope(k, cos, sin)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.k != self.n)
    return self.o_proj(o.transpose(1, 2).reshape(b, t, self.n * self.h))


class MLP(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    d, f, bias = cfg.d_model, cfg.d_ff, cfg.use_bias
    self.swiglu = cfg.mlp == "swiglu"
    self.up_proj = nn.Linear(d, f, bias=bias)
    self.gate_proj = nn.Linear(d, f, bias=bias) if self.swiglu else None
    self.down_proj = nn.Linear(f, d, bias=bias)

  def forward(self, x):
    up = self.up_proj(x)
    act = F.silu(self.gate_proj(x)) * up if self.swiglu else F.gelu(up, approximate="tanh")
    return self.down_proj(act)


class Block(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    self.attn_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
    self.attn = Attention(cfg)
    self.mlp_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
    self.mlp = MLP(cfg)

  def forward(self, x, cos, sin):
    x = x + self.attn(self.attn_norm(x), cos, sin)
    return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
  """tokens [B, T+1] -> mean next-token cross entropy (float32)."""

  def __init__(self, cfg):
    super().__init__()
    self.cfg = cfg
    self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
    self.pos_embed = (nn.Embedding(cfg.max_seq_len, cfg.d_model)
                      if cfg.position == "learned" else None)
    self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
    self.final_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_eps)
    self.lm_head = (None if cfg.tie_embeddings else
                    nn.Linear(cfg.d_model, cfg.vocab_size, bias=False))
    self._init(cfg)

  def _init(self, cfg):
    """jaxslm's init: normal(init_std), GPT-2 scaled std on o/down, zero biases."""
    out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    for name, p in self.named_parameters():
      if name.endswith("bias"):
        nn.init.zeros_(p)
      elif name.endswith("scale"):
        nn.init.ones_(p)
      elif name.endswith(("o_proj.weight", "down_proj.weight")):
        nn.init.normal_(p, std=out_std)
      elif name == "pos_embed.weight":
        nn.init.normal_(p, std=cfg.init_std / 2)
      else:
        nn.init.normal_(p, std=cfg.init_std)

  def forward(self, tokens_bt1):
    inputs, targets = tokens_bt1[:, :-1], tokens_bt1[:, 1:]
    logits = self.logits(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

  def logits(self, inputs):
    """tokens [B, T] -> logits [B, T, V] float32."""
    t = inputs.shape[1]
    x = self.embed(inputs)
    if self.pos_embed is not None:
      x = x + self.pos_embed(torch.arange(t, device=inputs.device))
    cos, sin = rope_tables(t, self.cfg.dim_per_head, self.cfg.rope_theta, inputs.device)
    for block in self.layers:
      x = block(x, cos, sin)
    x = self.final_norm(x)
    head = self.embed.weight if self.lm_head is None else self.lm_head.weight
    return F.linear(x, head).float()


def make_optimizer(model: nn.Module, train_cfg, device) -> torch.optim.Optimizer:
  """AdamW as jaxslm's: decay on matrices (ndim >= 2) only."""
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  groups = [{"params": decay, "weight_decay": train_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
  return torch.optim.AdamW(groups, lr=train_cfg.lr, betas=(train_cfg.b1, train_cfg.b2),
                           eps=train_cfg.eps, fused=True)


def load_jaxslm_params(model: Decoder, params) -> None:
  """Copy a jaxslm parameter tree into `model` (kernels [in, out] -> weights [out, in])."""
  import jax
  import numpy as np
  torch_params = dict(model.named_parameters())
  seen = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]
    name = ".".join(keys).replace("layers_", "layers.")
    value = np.asarray(leaf, np.float32)
    if name.endswith(".kernel"):
      name, value = name[: -len(".kernel")] + ".weight", value.T
    elif name in ("embed", "pos_embed"):
      name += ".weight"
    if name not in torch_params:
      raise KeyError(f"jaxslm parameter {'/'.join(keys)} has no torch counterpart {name!r}.")
    with torch.no_grad():
      torch_params[name].copy_(torch.from_numpy(np.array(value, copy=True)))
    seen.add(name)
  missing = sorted(set(torch_params) - seen)
  if missing:
    raise KeyError(f"torch parameters not set from jaxslm: {missing}")


def check_parity(preset: str, args) -> float:
  """Relative max |logits_torch - logits_jaxslm| (float32, jaxslm's initial params)."""
  import jax
  import numpy as np
  from jaxslm.models import Decoder as JaxDecoder, init_params
  cfg = common.model_config(preset, "float32", args.seq)
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, args.seq), np.int32)
  want = np.asarray(JaxDecoder(cfg).apply({"params": params}, tokens))
  model = Decoder(cfg)
  load_jaxslm_params(model, params)
  with torch.no_grad():
    got = model.logits(torch.from_numpy(tokens).long()).numpy()
  rel = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
  if rel > 1e-4:
    raise AssertionError(f"{preset}: torch and jaxslm logits differ (max relative error "
                         f"{rel:.2e}); the architectures differ.")
  return rel


def sync(device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def bench_preset(preset: str, mode: str, args, device, peak: float) -> dict:
  from jaxslm.config import base_config
  from jaxslm.models import count_params, flops_per_token

  cfg = common.model_config(preset, args.dtype, args.seq)
  train_cfg = base_config().train
  torch.manual_seed(int(train_cfg.seed))
  model = Decoder(cfg).to(device)
  n_params = sum(p.numel() for p in model.parameters())
  counts = count_params(cfg)
  assert n_params == counts["total"], (
      f"{preset}: the torch model has {n_params:,} parameters but jaxslm's has "
      f"{counts['total']:,}; the two architectures differ.")
  optimizer = make_optimizer(model, train_cfg, device)
  loss_fn = torch.compile(model) if mode == "compile" else model
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

  def step(tokens):
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = loss_fn(tokens)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
    optimizer.step()
    return loss.detach()

  gen = torch.Generator().manual_seed(0)
  batches = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen)
             .to(device) for _ in range(min(4, args.warmup + args.steps))]
  first = None
  for i in range(args.warmup):
    t0 = time.perf_counter()
    loss = step(batches[i % len(batches)])
    sync(device)
    if first is None:
      first = time.perf_counter() - t0
  times, contention = [], common.CpuContention().start()
  for i in range(args.steps):
    batch = batches[(args.warmup + i) % len(batches)]
    t0 = time.perf_counter()
    loss = step(batch)
    sync(device)
    times.append(time.perf_counter() - t0)
  other_cores = contention.stop()
  loss = float(loss)
  if not math.isfinite(loss):
    raise RuntimeError(f"{preset} [{mode}]: loss is {loss}.")
  flops_tok = flops_per_token(cfg, args.seq)
  return {
      "preset": preset, "mode": mode,
      "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
      "params_torch": n_params,
      "batch": args.batch, "seq": args.seq, "dtype": args.dtype, "param_dtype": "float32",
      "max_seq_len_used": cfg.max_seq_len, "first_step_s": first, "final_loss": loss,
      "other_processes_cpu_cores": other_cores,
      **common.step_stats(times, args.batch, args.seq, flops_tok, peak, 1),
  }


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = common.base_parser(__doc__.splitlines()[0])
  parser.add_argument("--mode", default=",".join(MODES), help="comma-separated: eager,compile")
  parser.add_argument("--check-parity", action="store_true",
                      help="first check, per preset, that the torch logits equal jaxslm's "
                           "with the same (copied) parameters")
  parser.add_argument("--device", default="", help="torch device; default cuda if available")
  args = parser.parse_args(argv)
  presets = common.check_args(args)
  modes = [m.strip() for m in args.mode.split(",") if m.strip()]
  if not modes or any(m not in MODES for m in modes):
    raise SystemExit(f"--mode {args.mode!r}: expected a comma-separated subset of {MODES}.")
  device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
  if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

  if args.peak_flops:
    peak, peak_src = args.peak_flops, "configured"
  elif device.type == "cpu":  # the same measured denominator as the JAX benchmark
    peak, peak_src = common.peak_flops(0.0, "cpu")
  else:
    from jaxslm.train import reporting
    kind = torch.cuda.get_device_name(device)
    match = [(n, f) for n, f in sorted(reporting.PEAK_FLOPS.items(), key=lambda kv: -len(kv[0]))
             if n.lower() in kind.lower()]
    peak, peak_src = ((match[0][1], f"{match[0][0]} bf16 spec") if match else
                      (0.0, f"unknown device {kind!r}: pass --peak-flops"))
  result = common.header(args, argv, implementation="torch", peak=peak, peak_source=peak_src)
  parity = {}
  if args.check_parity:
    for preset in presets:
      parity[preset] = check_parity(preset, args)
      print(f"{preset}: torch logits match jaxslm's (max relative error "
            f"{parity[preset]:.1e}; same params, float32)", flush=True)
  result.update(
      parity_max_rel_logit_error=parity or None,
      torch_version=torch.__version__,
      device_kind=(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
      backend=device.type, platform=device.type, device_count=1, process_count=1,
      torch_threads=torch.get_num_threads(),
      optimizer={"name": "torch.optim.AdamW(fused=True)", "grad_clip": "clip_grad_norm_"},
      results=[])
  print(f"torch {torch.__version__} on {result['device_kind']} ({device.type}, "
        f"{torch.get_num_threads()} threads); peak {peak / 1e12:.3g} TFLOP/s ({peak_src})",
        flush=True)
  for preset in presets:
    for mode in modes:
      try:
        record = bench_preset(preset, mode, args, device, peak)
      except Exception as e:  # e.g. inductor without a C++ compiler, out of memory
        msg = f"{type(e).__name__}: {e}"
        record = {"preset": preset, "mode": mode, "batch": args.batch, "seq": args.seq,
                  "dtype": args.dtype, "error": msg[:4000]}
      result["results"].append(record)
      common.print_row(record)
      common.write_json(result, args.out)
      if device.type == "cuda":
        torch.cuda.empty_cache()
  return result


if __name__ == "__main__":
  main()
