"""What a run shows and writes: progress line, metrics JSONL, loss curve, MFU."""

from __future__ import annotations

import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxslm import paths

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
    "A100": 312e12, "A10G": 125e12, "L4": 121e12, "RTX 4090": 165e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}

_measured_cpu_peak: float | None = None


def peak_flops_per_device(configured: float = 0.0) -> tuple[float, str]:
  """(peak FLOP/s, where the number came from) for the first local device."""
  if configured:
    return float(configured), "configured"
  kind = jax.devices()[0].device_kind
  for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      return flops, f"{name} bf16 spec"
  if jax.default_backend() == "cpu":
    return cached_cpu_peak()
  return 0.0, f"unknown device kind {kind!r}: set train.peak_flops"


def _machine_key() -> str:
  """This CPU, as far as a matmul rate depends on it: model name, core count, JAX version."""
  import os
  import platform
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                   model)
  except OSError:
    pass
  return f"{platform.node()}|{model}|{os.cpu_count()} cpus|jax {jax.__version__}"


def cache_path() -> str:
  import os
  root = os.environ.get("JAXSLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "jaxslm")
  return os.path.join(root, "cpu_peak_flops.json")


def cached_cpu_peak(repeats: int = 30) -> tuple[float, str]:
  """The CPU MFU denominator, measured once per machine and kept in
  `cache_path()`, so MFU compares between runs (a rate measured at each start
  moves with whatever else the machine is doing)."""
  import json
  import os
  path, key = cache_path(), _machine_key()
  try:
    with open(path) as f:
      cached = json.load(f)
    if isinstance(cached, dict) and isinstance(cached.get(key), (int, float)) and cached[key] > 0:
      return float(cached[key]), f"fp32 matmul measured on this machine, cached in {path}"
  except (OSError, ValueError):
    cached = {}
  peak = measure_matmul_peak(repeats=repeats)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = cached if isinstance(cached, dict) else {}
    data[key] = peak
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return peak, f"fp32 matmul measured on this machine now, cached in {path}"
  except OSError:
    return peak, "fp32 matmul measured on this CPU now (cache not writable)"


def measure_matmul_peak(n: int = 1024, repeats: int = 5) -> float:
  """Best observed FLOP/s of an n×n fp32 matmul (CPU MFU denominator)."""
  global _measured_cpu_peak
  if _measured_cpu_peak is None:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
      t0 = time.perf_counter()
      f(a).block_until_ready()
      best = min(best, time.perf_counter() - t0)
    _measured_cpu_peak = 2 * n ** 3 / best
  return _measured_cpu_peak


class MetricsLog:
  """Append-only JSONL of metric records (only process 0 writes)."""

  def __init__(self, path: str, enabled: bool = True):
    self.path, self.enabled = path, enabled

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    clean = {k: (float(v) if isinstance(v, (np.floating, np.integer, jax.Array)) else v)
             for k, v in record.items()}
    paths.append_text(self.path, json.dumps(clean) + "\n")

  def truncate_after(self, step: int) -> None:
    """Drop records past `step` (a resumed run recomputes them)."""
    if not self.enabled or not paths.exists(self.path):
      return
    keep = [r for r in self.read() if r.get("step", 0) <= step]
    paths.write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

  def read(self) -> list[dict]:
    if not paths.exists(self.path):
      return []
    return [json.loads(line) for line in paths.read_text(self.path).splitlines() if line.strip()]


class Progress:
  """One status line: rewritten in place on a terminal, printed every log step otherwise."""

  def __init__(self, total: int, enabled: bool = True, stream=None):
    self.total, self.enabled = total, enabled
    self.stream = stream or sys.stdout
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

  def update(self, step: int, **fields) -> None:
    if not self.enabled:
      return
    width = len(str(self.total))
    frac = step / max(self.total, 1)
    bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
    parts = [f"[{bar}] {step:>{width}}/{self.total}"]
    for k, v in fields.items():
      parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    line = " | ".join(parts)
    if self.tty:
      self.stream.write("\r" + line.ljust(100))
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def newline(self) -> None:
    if self.enabled and self.tty:
      self.stream.write("\n")
      self.stream.flush()


def _save_png(fig, path: str) -> None:
  """`fig` as a PNG at a local path or a URL (gs://)."""
  if not paths.is_remote(path):
    fig.savefig(path, dpi=120)
    return
  import io
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  paths.write_bytes(path, buf.getvalue())


def plot_losses(records: list[dict], path: str) -> str | None:
  """Train loss (and validation loss) against step, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  train = [(r["step"], r["loss"]) for r in records if "loss" in r]
  val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
  if not train and not val:
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  if train:
    ax.plot(*zip(*train), label="train loss", lw=1)
  if val:
    ax.plot(*zip(*val), "o-", label="validation loss")
  ax.set_xlabel("step")
  ax.set_ylabel("cross entropy (nats/token)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  _save_png(fig, path)
  plt.close(fig)
  return path


def plot_series(records: list[dict], path: str, panels: list[tuple[str, list[str]]]) -> str | None:
  """One panel per (y label, metric names), each metric against step, as a PNG
  (e.g. GRPO's reward and accuracy curves)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = [(label, [k for k in keys if any(r.get(k) is not None for r in records)])
            for label, keys in panels]
  panels = [p for p in panels if p[1]]
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
  for ax, (label, keys) in zip(axes[0], panels):
    for k in keys:
      pts = [(r["step"], r[k]) for r in records if r.get(k) is not None]
      ax.plot(*zip(*pts), "o-" if len(pts) < 30 else "-", label=k, lw=1, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  _save_png(fig, path)
  plt.close(fig)
  return path
