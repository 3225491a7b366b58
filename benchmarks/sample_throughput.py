"""Sampling throughput: decode tokens/s and time to first token, jaxslm vs transformers.

    python benchmarks/sample_throughput.py --presets slm26m,llama135m --batches 1,16,64 \
        --prompt-len 64 --new-tokens 64 --repeats 3 \
        --out benchmarks/results/cpu_sample_fp32.json

Both frameworks run the same model in one process, one after the other: the
jaxslm preset with random weights (`init_params`, PRNGKey(0)), and the Hugging
Face `transformers` model of the same architecture holding a copy of those
weights (so both generate the same greedy tokens, up to float rounding):

    llama-style presets (RMSNorm, SwiGLU, no biases)       -> LlamaForCausalLM
    GPT-style presets (LayerNorm, GELU(tanh), biases, RoPE) -> GPTNeoXForCausalLM
        (rotary on the full head dim, sequential residual, tied embeddings)

Parameter counts are asserted equal (jaxslm `count_params(cfg)["total"]`; torch
`sum(p.numel() for p in model.parameters())`, which counts tied weights once),
and before timing the HF logits of a random prompt are checked against
jaxslm's (max relative error <= 1e-4 in float32).

Method, identical for both frameworks, per batch size B (B random prompts of
`--prompt-len` tokens, the same ids for both, no padding), greedy, no EOS:

    TTFT           = median wall time of one generate call with max_new_tokens=1
                     (prefill + first token, host-side work included)
    decode tok/s   = B * (N - 1) / (median time of generate with max_new_tokens=N - TTFT)

jaxslm: `jaxslm.sampling.generate(cfg, params, prompts, max_new_tokens=N,
temperature=0.0, eos_id=None)` (jitted prefill + a `lax.while_loop` decode; it
returns after the tokens are on the host). transformers:
`model.generate(input_ids, attention_mask, max_new_tokens=N, min_new_tokens=N,
do_sample=False, use_cache=True, pad_token_id=0)` in eval mode under
`torch.inference_mode()`, `torch.set_num_threads(--threads)`, no EOS token.
Each shape (B, N) is warmed up once per framework before timing (jaxslm
compiles there); then the N=1 and N=N calls alternate `--repeats` times and
every sample is recorded.

--quantize none,int8,int8-dynamic adds jaxslm rows with int8 kernels
(`jaxslm.quant`; frameworks "jaxslm-int8", weight-only, and
"jaxslm-int8-dynamic", activations and head too). Every row gets the bandwidth bound (benchmarks/
bandwidth.py): the bytes a decode step reads (weights, plus the KV cache of
the call's mean context, prompt + N/2) over the read bandwidth (measured under
jit on a CPU, the spec on an H100/H200), divided by the measured step time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time

import pretrain_throughput as common  # benchmarks/pretrain_throughput.py, beside this file

FRAMEWORKS = ("jaxslm", "hf")
METHOD = ("greedy, no EOS, random prompt ids (same for both), no padding. TTFT = median wall "
          "time of a full generate call with max_new_tokens=1 (prefill + first token). "
          "decode tok/s = B*(N-1) / (median wall time of generate with max_new_tokens=N - TTFT). "
          "Each shape warmed up once per framework (compilation excluded); the N=1 and N=N "
          "calls then alternate --repeats times.")
HF_GELU_NOTE = ("GELU(tanh) as 'gelu_pytorch_tanh' (torch's fused F.gelu(approximate='tanh'); "
                "'gelu_new' is the same function written out in Python ops)")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--presets", default="slm26m,llama135m", help="comma-separated jaxslm presets")
  p.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes")
  p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per row")
  p.add_argument("--new-tokens", type=int, default=64, help="N, tokens generated per row")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype (jaxslm) / weight dtype (transformers)")
  p.add_argument("--quantize", default="none", help="comma-separated jaxslm weight formats: "
                 "none (the compute dtype), int8 (weight-only), int8-dynamic")
  p.add_argument("--bandwidth-mib", type=int, default=512,
                 help="array size of the read-bandwidth measurement (CPU)")
  p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                 help="comma-separated subset of jaxslm,hf")
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                 help="torch intra-op threads")
  p.add_argument("--hf-gelu", default="gelu_pytorch_tanh",
                 choices=("gelu_pytorch_tanh", "gelu_new"),
                 help="transformers' GELU(tanh) implementation for GPT-style presets")
  p.add_argument("--smoke", action="store_true",
                 help="seconds-long check: preset tiny, B=1,2, prompt 16, N=4, 1 repeat; "
                      "transformers only if torch and transformers import")
  p.add_argument("--out", default="", help="write the results here as JSON")
  args = p.parse_args(argv)
  if args.smoke:
    args.presets, args.batches, args.prompt_len = "tiny", "1,2", 16
    args.new_tokens, args.repeats, args.bandwidth_mib = 4, 1, 64
  return args


def check_args(args) -> tuple[list[str], list[int], list[str]]:
  from jaxslm.models import PRESETS as known
  presets = [x.strip() for x in args.presets.split(",") if x.strip()]
  bad = [x for x in presets if x not in known]
  if bad or not presets:
    raise SystemExit(f"--presets {args.presets!r}: unknown preset(s) {bad}; "
                     f"choose from {sorted(known)}.")
  try:
    batches = [int(x) for x in args.batches.split(",") if x.strip()]
  except ValueError:
    raise SystemExit(f"--batches {args.batches!r}: expected comma-separated integers.") from None
  if not batches or min(batches) < 1:
    raise SystemExit(f"--batches {args.batches!r}: expected positive integers.")
  frameworks = [x.strip() for x in args.frameworks.split(",") if x.strip()]
  if not frameworks or any(f not in FRAMEWORKS for f in frameworks):
    raise SystemExit(f"--frameworks {args.frameworks!r}: expected a subset of {FRAMEWORKS}.")
  args.quantize_list = [x.strip() for x in args.quantize.split(",") if x.strip()]
  from jaxslm.quant import QUANTIZE_CHOICES
  if not args.quantize_list or any(q not in QUANTIZE_CHOICES for q in args.quantize_list):
    raise SystemExit(f"--quantize {args.quantize!r}: expected a comma-separated subset of "
                     f"{','.join(QUANTIZE_CHOICES)}.")
  if args.new_tokens < 2:
    raise SystemExit(f"--new-tokens={args.new_tokens}: at least 2 are needed (decode tok/s "
                     "divides by N - 1).")
  for name in ("prompt_len", "repeats", "threads"):
    if getattr(args, name) < 1:
      raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)} must be positive.")
  if "hf" in frameworks:
    try:
      import torch  # noqa: F401
      import transformers  # noqa: F401
    except ImportError as e:
      if not args.smoke:
        raise SystemExit(f"transformers comparison needs torch and transformers ({e}): "
                         "pip install -r benchmarks/requirements.txt, or pass "
                         "--frameworks jaxslm.") from None
      print(f"--smoke: skipping transformers ({e})", flush=True)
      frameworks = [f for f in frameworks if f != "hf"]
  return presets, batches, frameworks


# ---------------------------------------------------------------- transformers side


def hf_model(cfg, args):
  """(model, its architecture's name, differences from jaxslm) for a jaxslm ModelConfig."""
  import torch
  import transformers
  common_kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                   num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                   intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len,
                   initializer_range=cfg.init_std, tie_word_embeddings=cfg.tie_embeddings,
                   bos_token_id=None, eos_token_id=None, pad_token_id=0)
  llama_like = cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and not cfg.use_bias
  neox_like = (cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.use_bias
               and cfg.num_kv_heads == cfg.n_heads and cfg.dim_per_head * cfg.n_heads == cfg.d_model)
  if cfg.position != "rope" or not (llama_like or neox_like):
    raise SystemExit(f"No transformers architecture is mapped for this config ({cfg.norm}, "
                     f"{cfg.mlp}, bias={cfg.use_bias}, {cfg.position}); use --frameworks jaxslm.")
  if llama_like:
    hf_cfg = transformers.LlamaConfig(
        **common_kw, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.dim_per_head,
        hidden_act="silu", rms_norm_eps=cfg.norm_eps, attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
    arch = transformers.LlamaForCausalLM
    differences = ["none in the architecture (same layers, GQA, RoPE rotate-half, tying)"]
  else:
    hf_cfg = transformers.GPTNeoXConfig(
        **common_kw, hidden_act=args.hf_gelu, layer_norm_eps=cfg.norm_eps,
        use_parallel_residual=False, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                         "partial_rotary_factor": 1.0})
    arch = transformers.GPTNeoXForCausalLM
    differences = [
        "q/k/v are one fused [D, 3D] projection (per-head interleaved) instead of three [D, D]: "
        "same parameters and FLOPs, one GEMM instead of three",
        HF_GELU_NOTE if args.hf_gelu == "gelu_pytorch_tanh" else
        "GELU(tanh) as 'gelu_new' (unfused Python ops)",
    ]
  torch.manual_seed(0)
  model = arch(hf_cfg)
  model.to(torch.bfloat16 if args.dtype == "bfloat16" else torch.float32).eval()
  if cfg.tie_embeddings and (model.get_output_embeddings().weight.data_ptr()
                             != model.get_input_embeddings().weight.data_ptr()):
    raise SystemExit(f"{arch.__name__} did not tie its embeddings; parameter counts would differ.")
  return model, arch.__name__, differences


def copy_params_to_hf(model, params, cfg, arch: str) -> None:
  """Load jaxslm's parameter tree into the transformers model (kernels [in, out] -> [out, in])."""
  import numpy as np
  import torch

  def t(x, transpose=False):
    x = np.asarray(x, np.float32)
    return torch.from_numpy(np.array(x.T if transpose else x, copy=True, order="C"))

  sd = {}
  n, h = cfg.n_heads, cfg.dim_per_head
  if arch == "LlamaForCausalLM":
    sd["model.embed_tokens.weight"] = t(params["embed"])
    for i in range(cfg.n_layers):
      lp, pre = params[f"layers_{i}"], f"model.layers.{i}."
      sd[pre + "input_layernorm.weight"] = t(lp["attn_norm"]["scale"])
      sd[pre + "post_attention_layernorm.weight"] = t(lp["mlp_norm"]["scale"])
      for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        sd[pre + f"self_attn.{name}.weight"] = t(lp["attn"][name]["kernel"], True)
      for name in ("gate_proj", "up_proj", "down_proj"):
        sd[pre + f"mlp.{name}.weight"] = t(lp["mlp"][name]["kernel"], True)
    sd["model.norm.weight"] = t(params["final_norm"]["scale"])
  else:  # GPTNeoXForCausalLM: query_key_value rows are [head][q|k|v][h]
    sd["gpt_neox.embed_in.weight"] = t(params["embed"])
    for i in range(cfg.n_layers):
      lp, pre = params[f"layers_{i}"], f"gpt_neox.layers.{i}."
      for src, dst in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")):
        sd[pre + f"{dst}.weight"] = t(lp[src]["scale"])
        sd[pre + f"{dst}.bias"] = t(lp[src]["bias"])
      a = lp["attn"]
      w = np.stack([np.asarray(a[f"{x}_proj"]["kernel"], np.float32).T.reshape(n, h, -1)
                    for x in "qkv"], axis=1)                        # [N, 3, H, D]
      b = np.stack([np.asarray(a[f"{x}_proj"]["bias"], np.float32).reshape(n, h)
                    for x in "qkv"], axis=1)                        # [N, 3, H]
      sd[pre + "attention.query_key_value.weight"] = torch.from_numpy(w.reshape(3 * n * h, -1))
      sd[pre + "attention.query_key_value.bias"] = torch.from_numpy(b.reshape(-1))
      sd[pre + "attention.dense.weight"] = t(a["o_proj"]["kernel"], True)
      sd[pre + "attention.dense.bias"] = t(a["o_proj"]["bias"])
      sd[pre + "mlp.dense_h_to_4h.weight"] = t(lp["mlp"]["up_proj"]["kernel"], True)
      sd[pre + "mlp.dense_h_to_4h.bias"] = t(lp["mlp"]["up_proj"]["bias"])
      sd[pre + "mlp.dense_4h_to_h.weight"] = t(lp["mlp"]["down_proj"]["kernel"], True)
      sd[pre + "mlp.dense_4h_to_h.bias"] = t(lp["mlp"]["down_proj"]["bias"])
    sd["gpt_neox.final_layer_norm.weight"] = t(params["final_norm"]["scale"])
    sd["gpt_neox.final_layer_norm.bias"] = t(params["final_norm"]["bias"])
  if not cfg.tie_embeddings:
    sd["lm_head.weight"] = t(params["lm_head"]["kernel"], True)
  own = dict(model.named_parameters())   # tied weights appear once
  missing, unknown = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
  if missing or unknown:
    raise KeyError(f"{arch}: parameters not set {missing}, unknown {unknown}")
  with torch.no_grad():
    for name, value in sd.items():
      if own[name].shape != value.shape:
        raise ValueError(f"{arch}.{name}: shape {tuple(own[name].shape)} != {tuple(value.shape)}")
      own[name].copy_(value)


def logits_parity(model, cfg, params, prompt_len: int) -> float:
  """Max |HF - jaxslm| / max |jaxslm| over the logits of 2 random prompts (float32)."""
  import jax
  import numpy as np
  import torch
  from jaxslm.models import Decoder
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, prompt_len), np.int32)
  cfg32 = cfg.replace(dtype="float32")
  want = np.asarray(jax.jit(lambda p, x: Decoder(cfg32).apply({"params": p}, x))(params, tokens))
  model32 = model.float()
  with torch.inference_mode():
    got = model32(torch.from_numpy(tokens).long()).logits.float().numpy()
  if cfg.dtype == "bfloat16":
    model.to(torch.bfloat16)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


# ---------------------------------------------------------------- timing


def time_calls(call_1, call_n, repeats: int) -> tuple[list[float], list[float], list, float | None]:
  """Warm up both calls once, then alternate them; (ttft samples, N samples, last outs, busy)."""
  out_1, out_n = call_1(), call_n()
  t1, tn = [], []
  contention, t_start = common.CpuContention().start(), time.perf_counter()
  for _ in range(repeats):
    t0 = time.perf_counter()
    out_1 = call_1()
    t1.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    out_n = call_n()
    tn.append(time.perf_counter() - t0)
  busy = contention.stop()
  # /proc/stat counts in clock ticks (10 ms): over a shorter window the figure is noise.
  return t1, tn, [out_1, out_n], busy if time.perf_counter() - t_start >= 1.0 else None


def summarise(framework, preset, batch, args, t1, tn, other_cores, first_s) -> dict:
  ttft, total = statistics.median(t1), statistics.median(tn)
  decode_s = total - ttft
  n = args.new_tokens
  return {
      "preset": preset, "framework": framework, "batch": batch, "prompt_len": args.prompt_len,
      "new_tokens": n, "dtype": args.dtype,
      "ttft_s": ttft, "generate_s": total,
      "decode_s": decode_s, "decode_step_s": decode_s / (n - 1),
      "decode_tok_s": batch * (n - 1) / decode_s if decode_s > 0 else None,
      "ttft_samples_s": [round(x, 6) for x in t1],
      "generate_samples_s": [round(x, 6) for x in tn],
      "first_calls_s": round(first_s, 3),
      "other_processes_cpu_cores": other_cores,
  }


def bench_jaxslm(cfg, params, prompts, batch, args, preset, name="jaxslm") -> tuple[dict, list]:
  from jaxslm.sampling import generate

  def call(n):
    return lambda: generate(cfg, params, prompts, max_new_tokens=n, temperature=0.0, eos_id=None)
  t0 = time.perf_counter()
  t1, tn, (out_1, out_n), busy = time_calls(call(1), call(args.new_tokens), args.repeats)
  first = time.perf_counter() - t0 - sum(t1) - sum(tn)
  lengths = {len(c.tokens) for c in out_n.completions}
  if lengths != {args.new_tokens} or out_n.timing["steps"] != args.new_tokens:
    raise RuntimeError(f"jaxslm generated {sorted(lengths)} tokens per row in "
                       f"{out_n.timing['steps']} steps, not {args.new_tokens}.")
  record = summarise(name, preset, batch, args, t1, tn, busy, first)
  # generate's own split of the last timed N-token call (prefill incl. host prep; the loop).
  record["jaxslm_timing_last_call"] = {k: (round(v, 6) if isinstance(v, float) else v)
                                       for k, v in out_n.timing.items()}
  record["jaxslm_timing_last_ttft_call"] = {k: (round(v, 6) if isinstance(v, float) else v)
                                            for k, v in out_1.timing.items()}
  return record, [c.tokens for c in out_n.completions]


def bench_hf(model, prompts, batch, args, preset) -> tuple[dict, list]:
  import torch
  ids = torch.tensor(prompts, dtype=torch.long)
  mask = torch.ones_like(ids)

  def call(n):
    def run():
      with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, use_cache=True,
                              pad_token_id=0)
    return run
  t0 = time.perf_counter()
  t1, tn, (_, out_n), busy = time_calls(call(1), call(args.new_tokens), args.repeats)
  first = time.perf_counter() - t0 - sum(t1) - sum(tn)
  new = out_n[:, ids.shape[1]:]
  if tuple(new.shape) != (batch, args.new_tokens):
    raise RuntimeError(f"transformers generated {tuple(new.shape)} tokens, not "
                       f"{(batch, args.new_tokens)}.")
  return summarise("hf", preset, batch, args, t1, tn, busy, first), new.tolist()


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
  """How far the two greedy continuations agree (they may diverge at near-ties)."""
  first = sum(x[0] == y[0] for x, y in zip(a, b)) / len(a)
  whole = sum(x == y for x, y in zip(a, b)) / len(a)
  prefix = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), len(x))
            for x, y in zip(a, b)]
  return {"first_token": first, "whole_rows": whole,
          "mean_common_prefix_tokens": statistics.mean(prefix)}


# ---------------------------------------------------------------- report


def fmt_s(x):
  return "—" if x is None else (f"{1e3 * x:.0f} ms" if x < 10 else f"{x:.1f} s")


def fmt_tps(x):
  return "—" if x is None else f"{x:,.0f}"


def markdown_table(result: dict) -> str:
  rows = [r for r in result["results"] if "error" not in r]
  hf = {(r["preset"], r["batch"]): r["decode_tok_s"] for r in rows if r["framework"] == "hf"}
  lines = ["| model | B | framework | TTFT | decode tok/s | vs HF decode | step / bandwidth bound |",
           "|---|---:|---|---:|---:|---:|---:|"]
  for r in sorted(rows, key=lambda r: (result["presets"].index(r["preset"]), r["batch"],
                                       r["framework"])):
    ref = hf.get((r["preset"], r["batch"]))
    ratio = f"{r['decode_tok_s'] / ref:.2f}×" if ref and r["decode_tok_s"] else "—"
    bound = r.get("bound_fraction")
    lines.append(f"| {r['preset']} | {r['batch']} | {r['framework']} | {fmt_s(r['ttft_s'])} "
                 f"| {fmt_tps(r['decode_tok_s'])} | {ratio} "
                 f"| {'—' if bound is None else f'{100 * bound:.0f}%'} |")
  return "\n".join(lines)


def add_bound(record: dict, params, cfg, args, bandwidth: float) -> None:
  """The step's bytes (weights + KV of the mean context) / bandwidth / step time."""
  import bandwidth as bw  # benchmarks/bandwidth.py
  b = bw.step_bytes(params, cfg, record["batch"], args.prompt_len + args.new_tokens / 2)
  step = record.get("decode_step_s")   # None / <= 0: too noisy to time (e.g. --smoke)
  record.update(b, bound_s=b["total_bytes"] / bandwidth,
                bound_fraction=b["total_bytes"] / bandwidth / step if step and step > 0 else None)


def header(args, argv, frameworks) -> dict:
  import jax
  info = {
      "benchmark": "sample_throughput",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join(shlex.quote(a) for a in
                          ["python", os.path.relpath(sys.argv[0]) if sys.argv[0] else "-",
                           *argv]),
      "jax_version": jax.__version__, "python_version": platform.python_version(),
      "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(),
      "host": {"cpu_count": os.cpu_count(), "processor": common._cpu_name(),
               "loadavg_1min_at_start": common.loadavg()},
      "method": METHOD,
      "quantize": args.quantize_list,
      "settings": {"batches": args.batches, "prompt_len": args.prompt_len,
                   "new_tokens": args.new_tokens, "repeats": args.repeats, "dtype": args.dtype,
                   "frameworks": frameworks, "smoke": args.smoke},
      "jaxslm_call": ("jaxslm.sampling.generate(cfg, params, prompts, max_new_tokens=N, "
                      "temperature=0.0, eos_id=None)"),
  }
  if "hf" in frameworks:
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    info.update(torch_version=torch.__version__, transformers_version=transformers.__version__,
                torch_threads=torch.get_num_threads(),
                hf_call=("model.generate(input_ids, attention_mask, max_new_tokens=N, "
                         "min_new_tokens=N, do_sample=False, use_cache=True, pad_token_id=0) "
                         "under torch.inference_mode(), model.eval(), no EOS token"))
  return info


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  presets, batches, frameworks = check_args(args)

  import jax
  import numpy as np
  from jaxslm import quant
  from jaxslm.models import ModelConfig, count_params, init_params

  if "hf" in frameworks:
    import transformers
    transformers.logging.set_verbosity_error()
  result = header(args, argv, frameworks)
  result.update(presets=presets, models={}, results=[], comparisons=[])
  import bandwidth as bw  # benchmarks/bandwidth.py
  band, band_src = bw.device_bandwidth(args.bandwidth_mib)
  result["bandwidth"] = {"bytes_per_s": band, "source": band_src}
  print(f"read bandwidth: {band / 1e9:.1f} GB/s ({band_src})", flush=True)
  print(f"jaxslm (JAX {jax.__version__}, {jax.default_backend()})"
        + (f" vs transformers {result['transformers_version']} (torch {result['torch_version']}, "
           f"{result['torch_threads']} threads)" if "hf" in frameworks else "")
        + f"; prompt {args.prompt_len}, N={args.new_tokens}, {args.repeats} repeats, {args.dtype}",
        flush=True)

  for preset in presets:
    cfg = ModelConfig.preset(preset, dtype=args.dtype)
    if args.prompt_len + args.new_tokens > cfg.max_seq_len:
      raise SystemExit(f"--prompt-len + --new-tokens = {args.prompt_len + args.new_tokens} "
                       f"exceeds {preset}.max_seq_len={cfg.max_seq_len}.")
    params = init_params(cfg, jax.random.PRNGKey(0))
    info = {"params_jaxslm": count_params(cfg)["total"], "config": cfg.to_dict()}
    model = None
    if "hf" in frameworks:
      model, arch, differences = hf_model(cfg, args)
      copy_params_to_hf(model, params, cfg, arch)
      n_hf = sum(p.numel() for p in model.parameters())
      info.update(hf_architecture=arch, params_hf=n_hf, hf_differences=differences,
                  hf_attn_implementation=model.config._attn_implementation,
                  hf_cache_implementation=(model.generation_config.cache_implementation
                                           or "dynamic (default)"),
                  hf_config=model.config.to_diff_dict())
      if n_hf != info["params_jaxslm"]:
        raise AssertionError(f"{preset}: {arch} has {n_hf:,} parameters, jaxslm "
                             f"{info['params_jaxslm']:,}; the architectures differ.")
      info["logits_max_rel_error"] = logits_parity(model, cfg, params, args.prompt_len)
      # float32: the same function to rounding; bfloat16 (8-bit mantissa) rounds
      # differently in each framework, so only a gross mismatch is an error.
      tolerance = 1e-4 if args.dtype == "float32" else 5e-2
      if info["logits_max_rel_error"] > tolerance:
        raise AssertionError(f"{preset}: {arch} logits differ from jaxslm's (max relative error "
                             f"{info['logits_max_rel_error']:.2e}) with the same weights.")
      print(f"{preset}: {info['params_jaxslm']:,} params (jaxslm) = {n_hf:,} ({arch}); "
            f"logits agree to {info['logits_max_rel_error']:.1e} (relative)", flush=True)
    result["models"][preset] = info

    rng = np.random.default_rng(0)
    for batch in batches:
      prompts = rng.integers(0, cfg.vocab_size, (batch, args.prompt_len)).tolist()
      tokens, records = {}, {}
      runs = [(f"jaxslm-{q}" if q != "none" else "jaxslm", q) for q in args.quantize_list
              if "jaxslm" in frameworks] + [("hf", "none")] * ("hf" in frameworks)
      for fw, q in runs:
        try:
          if fw.startswith("jaxslm"):
            run_params = params if q == "none" else quant.apply_quantize(params, q)
            record, tokens[fw] = bench_jaxslm(cfg, run_params, prompts, batch, args, preset, fw)
          else:
            run_params = params
            record, tokens[fw] = bench_hf(model, prompts, batch, args, preset)
          add_bound(record, run_params, cfg, args, band)
        except Exception as e:  # record it and go on (e.g. out of memory)
          record = {"preset": preset, "framework": fw, "batch": batch,
                    "error": f"{type(e).__name__}: {e}"[:4000]}
        result["results"].append(record)
        records[fw] = record
        print_record(record)
        common.write_json(result, args.out)
      for fw in [f for f in tokens if f != "hf" and "hf" in tokens]:
        j, h = records[fw], records["hf"]
        ratio = (j["decode_tok_s"] / h["decode_tok_s"]
                 if j["decode_tok_s"] and h["decode_tok_s"] else None)
        comp = {"preset": preset, "batch": batch, "framework": fw,
                "decode_tok_s_ratio_jaxslm_over_hf": ratio,
                "ttft_ratio_hf_over_jaxslm": h["ttft_s"] / j["ttft_s"],
                "greedy_token_agreement": agreement(tokens[fw], tokens["hf"])}
        result["comparisons"].append(comp)
        print(f"{'':>10}{fw} / HF decode tok/s: "
              f"{'—' if ratio is None else f'{ratio:.2f}x'}; greedy tokens agree: first "
              f"{comp['greedy_token_agreement']['first_token']:.0%}, whole rows "
              f"{comp['greedy_token_agreement']['whole_rows']:.0%}", flush=True)
    del params, model

  result["markdown_table"] = markdown_table(result)
  common.write_json(result, args.out)
  print("\n" + result["markdown_table"], flush=True)
  return result


def print_record(r: dict) -> None:
  tag = f"{r['preset']} {r['framework']:>6} B={r['batch']:<3}"
  if "error" in r:
    print(f"{tag}: FAILED ({r['error'][:300]})", flush=True)
    return
  print(f"{tag}: TTFT {fmt_s(r['ttft_s'])}, generate({r['new_tokens']}) {fmt_s(r['generate_s'])}"
        f", decode {1e3 * r['decode_step_s']:.1f} ms/step = {fmt_tps(r['decode_tok_s'])} tok/s"
        f" (warm-up {r['first_calls_s']:.1f} s)"
        + (f", {100 * r['bound_fraction']:.0f}% of the bandwidth bound" if r.get("bound_fraction")
           else ""), flush=True)
  busy = r.get("other_processes_cpu_cores")
  if busy is not None and busy > 0.2:
    print(f"{'':>10}warning: other processes kept {busy:.2f} CPU cores busy meanwhile; "
          "the timing is skewed", flush=True)


if __name__ == "__main__":
  main()
