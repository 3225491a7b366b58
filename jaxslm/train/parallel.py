"""Data parallelism and FSDP by sharding: a `Mesh` over ("data", "fsdp").

Parameters get logical axis names from one table of path rules, and one rules
table maps logical axes to mesh axes. The batch is split over both mesh axes;
with `fsdp > 1`, parameters and optimizer state are split over "fsdp" too.

LoRA trees follow their kernel's rule: a wrapped kernel's base `w` has the
kernel's axes, an adapter `a` [in, r] its input axis and `b` [r, out] its
output axis (rank replicated), whether they sit in a `LoraWeight` (`.../kernel/w`,
`.../kernel/a/0`) or in the trainable tree of `lora.split` (`.../kernel/a0`).
NF4-quantized kernels (flat code arrays) stay replicated.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxslm.errors import UserError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

# Parameter path (regex, searched at the end of the path) -> logical axes.
PARAM_AXES: tuple[tuple[str, tuple], ...] = (
    (r"(^|/)embed$", ("vocab", "embed")),
    (r"(^|/)pos_embed$", (None, "embed")),
    (r"(q|k|v)_proj/kernel$", ("embed", "heads")),
    (r"o_proj/kernel$", ("heads", "embed")),
    (r"(gate|up)_proj/kernel$", ("embed", "mlp")),
    (r"down_proj/kernel$", ("mlp", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
)

# Logical axis -> mesh axis (None: replicated).
AXIS_RULES = {"embed": "fsdp", "vocab": None, "heads": None, "mlp": None}


def mesh_shape(data: int, fsdp: int, n_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes for `n_devices`; -1 for `data` takes every remaining device."""
  if fsdp < 1 or n_devices % fsdp:
    raise UserError(f"mesh.fsdp={fsdp} must be a positive divisor of the {n_devices} devices.")
  if data == -1:
    data = n_devices // fsdp
  if data * fsdp != n_devices:
    raise UserError(f"mesh.data={data} x mesh.fsdp={fsdp} = {data * fsdp} but there are "
                    f"{n_devices} devices; set mesh.data=-1 to use them all.")
  return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A ("data", "fsdp") mesh over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices).reshape(mesh_shape(data, fsdp, len(devices))), MESH_AXES)


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


# A part of a LoRA-wrapped kernel: its base `w`, or adapter `a`/`b` number i.
_LORA_PART = re.compile(r"^(.*)/(w|a/?\d+|b/?\d+)$")


def logical_axes(path: str, ndim: int) -> tuple:
  for pattern, axes in PARAM_AXES:
    if re.search(pattern, path) and len(axes) == ndim:
      return axes
  lora_part = _LORA_PART.match(path)
  if lora_part and ndim == 2:
    kernel = logical_axes(lora_part.group(1), 2)
    part = lora_part.group(2)[0]
    return kernel if part == "w" else (kernel[0], None) if part == "a" else (None, kernel[1])
  return (None,) * ndim


def spec_for(path: str, shape: tuple, mesh: Mesh) -> P:
  """PartitionSpec of one parameter-shaped leaf (params or optimizer moments)."""
  axes = logical_axes(path, len(shape))
  mesh_axes = [AXIS_RULES.get(a) if a else None for a in axes]
  used = [m for m in mesh_axes if m]
  if len(used) != len(set(used)):
    raise UserError(f"Sharding rules map two axes of {path} {axes} to the same mesh axis.")
  for dim, m in zip(shape, mesh_axes):
    if m and dim % mesh.shape[m]:
      raise UserError(f"Cannot shard {path} (shape {shape}) over mesh axis {m!r} of size "
                       f"{mesh.shape[m]}: {dim} is not divisible. Choose mesh.{m} dividing {dim}.")
  return P(*[m if m and mesh.shape[m] > 1 else None for m in mesh_axes])


def tree_shardings(tree, mesh: Mesh):
  """NamedShardings for any tree whose leaves sit at parameter-like paths."""
  def one(path, leaf):
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, spec_for(path_str(path), shape, mesh) if shape else P())
  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, batch_dim: int = 0, ndim: int = 2) -> NamedSharding:
  spec = [None] * ndim
  spec[batch_dim] = BATCH_AXES
  return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_array(local: np.ndarray, sharding: NamedSharding, global_shape: tuple) -> jax.Array:
  """A global array from this process's rows (each process feeds only its share)."""
  return jax.make_array_from_process_local_data(sharding, local, global_shape)


def put_replicated(tree, mesh: Mesh):
  """`tree` replicated on every device of `mesh` (see `put_sharded`)."""
  return put_sharded(tree, replicated(mesh))


def put_sharded(tree, shardings):
  """`tree` placed per `shardings` (a matching tree, or one sharding for all). With
  several processes, leaves committed to this process's devices (a checkpoint just
  loaded) go through the host, as JAX moves no buffer between hosts; every
  process must pass equal values."""
  if jax.process_count() > 1:
    tree = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, tree)
  return jax.device_put(tree, shardings)


def is_replicated(tree) -> bool:
  return all(x.is_fully_replicated for x in jax.tree.leaves(tree) if isinstance(x, jax.Array))


@functools.lru_cache(maxsize=8)
def _gather_fn(mesh: Mesh):
  return jax.jit(lambda tree: tree, out_shardings=replicated(mesh))


def gathered(tree, mesh: Mesh):
  """`tree` with every leaf replicated on `mesh`: FSDP-sharded leaves gathered
  into a full copy on each device (a collective: every process must call it).
  Unchanged (no copy) when it is replicated already. Drop the copy (`del`) when
  done: it holds the full parameters on every device."""
  if is_replicated(tree):
    return tree
  return _gather_fn(mesh)(tree)


class Static:
  """A pytree (of shardings) as a hashable value, for a jitted function's static argument."""

  def __init__(self, tree):
    self.leaves, self.treedef = jax.tree.flatten(tree)
    self.leaves = tuple(self.leaves)

  @property
  def tree(self):
    return jax.tree.unflatten(self.treedef, self.leaves)

  def __hash__(self):
    return hash((self.treedef, self.leaves))

  def __eq__(self, other):
    return isinstance(other, Static) and (self.treedef, self.leaves) == (other.treedef,
                                                                         other.leaves)


def local_replica(tree):
  """This process's copy of a replicated tree, on its first local device: for
  work each process does on its own (sampling its prompts, evaluation). The
  leaves share the replicated buffers: do not use them after donating `tree`."""
  def one(x):
    if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
      return x
    if not x.is_fully_replicated:
      raise ValueError(f"local_replica needs replicated arrays; got one sharded as {x.sharding}.")
    return x.addressable_data(0)
  return jax.tree.map(one, tree)


def gather_rows(tree):
  """Every process's rows (leading axis) of each numpy leaf, concatenated in
  process order: per-process host values (rewards, lengths) made global. Sent
  as raw bytes, so float64 stays float64 (a JAX array would make it float32).
  Every process must pass the same structure and row counts. One process: unchanged."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils
  leaves, treedef = jax.tree.flatten(tree)
  arrays = [np.ascontiguousarray(x) for x in leaves]
  raw = [a.reshape(a.shape[0], -1).view(np.uint8) for a in arrays]
  got = multihost_utils.process_allgather(raw, tiled=True)
  out = [np.asarray(r).view(a.dtype).reshape(-1, *a.shape[1:]) for r, a in zip(got, arrays)]
  return jax.tree.unflatten(treedef, out)


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (e.g. a stop request), so
  all processes leave a loop at the same step."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))
