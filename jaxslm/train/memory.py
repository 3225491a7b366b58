"""How much device memory a training step needs, printed before the first step.

Exact parts (from shapes and shardings, per device): parameters, optimizer
state (from the abstract state, `jax.eval_shape`), gradients. Estimated parts
(stated as such): activations kept for the backward pass and, for GRPO, the
sampler's KV cache. FSDP shows up through the shardings: a leaf split over
`fsdp` devices counts 1/fsdp of its bytes on each.

Activations (per device, B its rows, T tokens, D d_model, L layers, N heads,
V vocab, b the compute dtype's bytes):

    B·T·(D·ACTIVATION_FACTOR           block activations: 16 values of D and 7 of
         + F·FF_FACTOR)·L·b            d_ff (F) per token and layer
  + B·N·T²·L·b                        attention probabilities (the XLA path keeps them)
  + B·T·V·4·2                         float32 logits and their gradient

Korthikanti et al. (2022) count ~34·B·T·D bytes per layer in 16-bit, about 17
values of D per token, for a 4·D MLP; XLA's CPU compiler keeps more. The d_ff
term is fit to its account of the compiled train step (tiny, 26M-shaped and
SmolLM2-shaped models: the whole estimate is 0.9-1.05x of XLA's peak).

With `remat`, blocks keep only their inputs (B·T·D·L·b) plus one block's
working set (the block term for one layer + B·N·T²·b) at a time.

The KV cache of the sampler: rows × L × 2 (k and v) × kv heads × head dim ×
cache length × b, on the one device a process samples on. With FSDP, GRPO
samples from a gathered (whole) copy of the policy, counted as `rollout params`:
it is freed before the update, so this sum over-counts the peak a little.

GRPO's learning pass has its own count (`grpo_activation_bytes`): its prompts
run once and their groups' completions continue from the cache, so it counts
P·prefix + N·completion tokens, d_ff too, and four float32 copies of the
completion logits.

The estimate is printed before anything runs, so it is rough. GRPO also
compiles its learning step and reference pass ahead of time for each rollout
shape (`Accounted`) and prints XLA's own account of it before it runs, with a
warning when that exceeds the free memory; an out-of-memory failure there is
reported with the `grpo.grad_accum` that would fit. Against XLA's CPU account of
the GRPO step on SmolLM2-135M (`benchmarks/grpo_memory.py`) the estimate was
0.91x of its peak at 64 rows x 256 tokens, 1.01x at 64 rows x 160 in four
micro-batches, and 0.24x with `remat`, which the CPU compiler does not turn into
a smaller peak (BENCHMARKS.md).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import jax
import numpy as np

ACTIVATION_FACTOR = 16
FF_FACTOR = 7            # values of d_ff kept per token and layer (fit to XLA's CPU account)


def fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
    n /= 1024
  return f"{n:.3g} TiB"   # pragma: no cover


def _dtype_bytes(dtype) -> int:
  return np.dtype(dtype).itemsize


def leaf_bytes(leaf, sharding=None) -> int:
  """Bytes of one array (or ShapeDtypeStruct) on one device under `sharding`
  (anything with `shard_shape(shape)`; None: the whole array)."""
  shape = tuple(getattr(leaf, "shape", ()))
  if sharding is not None and shape:
    shape = tuple(sharding.shard_shape(shape))
  return int(math.prod(shape)) * _dtype_bytes(leaf.dtype)


def tree_bytes(tree, shardings=None) -> int:
  """Per-device bytes of every array leaf of `tree` (shardings: a matching tree or None)."""
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
  if shardings is None:
    return sum(leaf_bytes(x) for x in leaves)
  shs = jax.tree.leaves(shardings, is_leaf=lambda s: hasattr(s, "shard_shape"))
  if len(shs) != len(leaves):
    raise ValueError(f"{len(leaves)} leaves but {len(shs)} shardings")
  return sum(leaf_bytes(x, s) for x, s in zip(leaves, shs))


def activation_bytes(model_cfg, batch: int, seq_len: int) -> int:
  """The activation estimate of the module doc, for `batch` rows on one device."""
  b = _dtype_bytes(model_cfg.dtype)
  B, T, D, L, N = batch, seq_len, model_cfg.d_model, model_cfg.n_layers, model_cfg.n_heads
  block = B * T * (D * ACTIVATION_FACTOR + model_cfg.d_ff * FF_FACTOR) * b
  attn = B * N * T * T * b
  kept = (B * T * D * L * b + block + attn) if model_cfg.remat else (block + attn) * L
  return kept + B * T * model_cfg.vocab_size * 4 * 2


GRPO_LOGIT_COPIES = 4    # float32 [rows, completion, V] copies: logits, log-softmax, its exp, gradient


def grpo_activation_bytes(model_cfg, prompts: int, prefix: int, rows: int,
                          completion: int) -> int:
  """The activations GRPO's learning pass keeps, in its shared-prefix layout: `prompts`
  rows of `prefix` tokens run once, then `rows` completions of `completion` tokens
  continue from their caches. Per layer, each of those tokens keeps 16 values of D,
  FF_FACTOR of d_ff and its attention scores over prefix + completion slots; the
  logits (completion positions only) keep GRPO_LOGIT_COPIES float32 copies. The
  factors come from XLA's CPU account of the compiled step (a fit over tiny models,
  checked on SmolLM2 in BENCHMARKS.md)."""
  b = _dtype_bytes(model_cfg.dtype)
  tokens, slots = prompts * prefix + rows * completion, prefix + completion
  block = tokens * (model_cfg.d_model * ACTIVATION_FACTOR + model_cfg.d_ff * FF_FACTOR) * b
  attn = tokens * model_cfg.n_heads * slots * b
  L = model_cfg.n_layers
  kept = (tokens * model_cfg.d_model * L * b + block + attn) if model_cfg.remat else (block + attn) * L
  return kept + rows * completion * model_cfg.vocab_size * 4 * GRPO_LOGIT_COPIES


def kv_cache_bytes(model_cfg, rows: int, length: int) -> int:
  """rows × layers × 2 × kv heads × head dim × length × dtype bytes."""
  return (rows * model_cfg.n_layers * 2 * model_cfg.num_kv_heads * model_cfg.dim_per_head
          * length * _dtype_bytes(model_cfg.dtype))


@dataclasses.dataclass
class Estimate:
  """Per-device bytes by part; `estimated` names the parts that are estimates."""
  parts: dict[str, int]
  estimated: tuple[str, ...] = ("activations", "kv_cache")
  where: str = ""

  @property
  def total(self) -> int:
    return sum(self.parts.values())

  def line(self) -> str:
    def part(k, v):
      return f"{k.replace('_', ' ')} {'~' if k in self.estimated else ''}{fmt_bytes(v)}"
    body = " + ".join(part(k, v) for k, v in self.parts.items() if v)
    rough = any(self.parts.get(k) for k in self.estimated)
    note = " (~: estimates, see jaxslm/train/memory.py)" if rough else ""
    return (f"Memory per device{f' ({self.where})' if self.where else ''}: {body} = "
            f"{'~' if rough else ''}{fmt_bytes(self.total)}{note}")


def estimate(model_cfg, *, params, opt_state, batch_per_device: int, seq_len: int,
             param_shardings=None, opt_shardings=None, frozen=None, frozen_shardings=None,
             grad_copies: int = 1, extra: dict[str, int] | None = None,
             kv_cache: tuple[int, int] | None = None, where: str = "",
             activations: int | None = None) -> Estimate:
  """Per-device memory of one step. `params`: the trained tree (its gradients
  have its shapes and shardings, `grad_copies` of them: 2 while accumulating
  micro-batches); `frozen`: params without gradients (a LoRA base); `extra`:
  other exact parts (a reference snapshot); `kv_cache`: (rows, length) of the
  sampler. Shardings (matching trees) make FSDP-split leaves count their shard."""
  parts = {"params": tree_bytes(params, param_shardings)}
  if frozen is not None:
    parts["frozen"] = tree_bytes(frozen, frozen_shardings)
  parts.update(extra or {})
  parts["optimizer"] = tree_bytes(opt_state, opt_shardings)
  parts["gradients"] = grad_copies * tree_bytes(params, param_shardings)
  parts["activations"] = (activation_bytes(model_cfg, batch_per_device, seq_len)
                         if activations is None else activations)
  if kv_cache is not None:
    parts["kv_cache"] = kv_cache_bytes(model_cfg, *kv_cache)
  return Estimate(parts, where=where)


def grpo_estimate(model_cfg, *, trainable, frozen, opt_state, rows_per_device: int,
                  rollout_len: int, sample_prompts: int, group: int, prompt_budget: int,
                  max_new_tokens: int, trainable_shardings=None, frozen_shardings=None,
                  opt_shardings=None, where: str = "", grad_copies: int = 1) -> Estimate:
  """A GRPO step: policy (trainable + frozen), the reference snapshot (a copy of
  the trainable tree), AdamW state, gradients, the update's activations
  (`rows_per_device` × rollout length) and the KV cache of the rollouts one
  process samples on one device: its `sample_prompts` × `group` completions
  (`rows_per_device`: one micro-batch's rows with `grpo.grad_accum`, whose
  summed gradients are a second copy, `grad_copies` 2)
  (the sampler rounds the prompt count, prompt length and budget up to powers of two).
  With FSDP (shardings that split leaves) the sampler needs the whole policy:
  a gathered copy (`rollout_params`) lives on each device while sampling."""
  from jaxslm.sampling.generate import bucket
  prefix = max(min(prompt_budget - 1, rollout_len - 2), 1)
  completion = max(min(max_new_tokens, rollout_len - 1 - prefix), 1)
  activations = grpo_activation_bytes(model_cfg, max(rows_per_device // group, 1), prefix,
                                      rows_per_device, completion)
  cache_len = (bucket(min(prompt_budget, model_cfg.max_seq_len))
               + bucket(min(max_new_tokens, model_cfg.max_seq_len)))
  extra = {"reference": tree_bytes(trainable, trainable_shardings)}
  whole = tree_bytes(trainable) + tree_bytes(frozen)
  split = tree_bytes(trainable, trainable_shardings) + tree_bytes(frozen, frozen_shardings)
  if split < whole:
    extra["rollout_params"] = whole
  return estimate(model_cfg, params=trainable, frozen=frozen, opt_state=opt_state,
                  param_shardings=trainable_shardings, frozen_shardings=frozen_shardings,
                  opt_shardings=opt_shardings, extra=extra, batch_per_device=rows_per_device,
                  grad_copies=grad_copies, activations=activations,
                  seq_len=rollout_len - 1, kv_cache=(bucket(sample_prompts, 1) * group, cache_len),
                  where=", ".join(x for x in (where, "rollouts on one device per process") if x))


def _account(compiled) -> tuple[int, int, int, int] | None:
  """XLA's (arguments, outputs, outputs aliasing donated inputs, temporaries) bytes of
  a compiled call, or None where the backend gives no account."""
  try:
    stats = compiled.memory_analysis()
  except Exception:   # noqa: BLE001 - not every backend implements it
    return None
  if stats is None:
    return None
  return tuple(getattr(stats, f"{k}_size_in_bytes", 0)
               for k in ("argument", "output", "alias", "temp"))


def compiled_line(compiled, name: str = "Compiled step") -> str | None:
  """XLA's own account of a compiled step (None where the backend gives none)."""
  account = _account(compiled)
  if account is None:
    return None
  args, out, alias, temp = account
  return (f"{name} (XLA, per device): arguments {fmt_bytes(args)}, outputs "
          f"{fmt_bytes(out)} ({fmt_bytes(alias)} reusing donated inputs), temporaries "
          f"{fmt_bytes(temp)}; peak about {fmt_bytes(args + out - alias + temp)}")


def compiled_need(compiled) -> int | None:
  """Bytes a compiled call allocates beyond its (resident) arguments: outputs not
  aliasing a donated input, plus temporaries (None where the backend gives no account)."""
  account = _account(compiled)
  if account is None:
    return None
  _, out, alias, temp = account
  return out - alias + temp


_COMPILED: collections.OrderedDict = collections.OrderedDict()   # signature -> compiled
_KEEP = 32   # executables kept per process (the most recently used)


def _signature(args) -> tuple:
  """What a compiled executable is specific to: the tree, and each leaf's shape,
  dtype, weak type, sharding and whether it is committed to it."""
  leaves, tree = jax.tree.flatten(args)
  return tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__)),
                      getattr(x, "weak_type", None), getattr(x, "sharding", None),
                      getattr(x, "_committed", None)) for x in leaves)


def _out_of_memory(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text and "memory" in text.lower()


class Accounted:
  """A jitted function with its static arguments, compiled ahead of time for each
  input signature it meets, so that XLA's own memory account of that shape is
  known before it runs: logged once per signature (`what` names the function,
  `describe(*args)` the shape), with a warning and `advice(need, free)` when
  what it allocates exceeds the free memory. Running out of memory while it
  compiles or runs becomes a `UserError` with that advice and XLA's first line.
  The last 32 executables are kept per process (a second run with the same
  settings compiles nothing), as the jit cache would."""

  def __init__(self, jitted, static: dict, *, what: str, log, advice, describe, free=None):
    self.jitted, self.static, self.what, self.log, self.advice = jitted, static, what, log, advice
    self.describe, self.free = describe, free
    self._static_key = (jitted, tuple(sorted(static.items())))

  def compiled(self, *args):
    key = (self._static_key, _signature(args))
    out = _COMPILED.get(key)
    if out is not None:
      _COMPILED.move_to_end(key)
      return out
    out = self.jitted.lower(*args, **self.static).compile()
    _COMPILED[key] = out
    while len(_COMPILED) > _KEEP:
      _COMPILED.popitem(last=False)
    need = compiled_need(out)
    if need is not None:
      free = self.free() if self.free is not None else None
      self.log(compiled_line(out, f"{self.what}, {self.describe(*args)}"))
      if free is not None and need > free:
        self.log(f"Warning: {self.what} allocates {fmt_bytes(need)} beyond its inputs, more "
                 f"than the {fmt_bytes(free)} free; {self.advice(need, free)}.")
    return out

  def __call__(self, *args):
    compiled = None
    try:
      compiled = self.compiled(*args)
      return compiled(*args)
    except Exception as e:   # noqa: BLE001 - XLA's error type varies by version
      if not _out_of_memory(e):
        raise
      from jaxslm.errors import UserError
      need = compiled_need(compiled) if compiled is not None else None
      free = self.free() if self.free is not None else 0
      first = str(e).strip().splitlines()[0]
      raise UserError(f"{self.what} ran out of memory"
                      + (f" (XLA's account: {fmt_bytes(need)} beyond its inputs)" if need else "")
                      + f"; {self.advice(need or 0, free)}. XLA said: {first}") from e
