"""LoRA as parameter-tree transforms: add, stack, merge, freeze, save.

    from jaxslm import lora
    cfg = lora.LoraConfig(rank=8, alpha=16, targets="qv")       # attn q/v kernels
    params = lora.add_adapter(base_params, cfg, jax.random.PRNGKey(0))
    trainable, frozen = lora.split(params)                       # newest adapter only
    opt_state = optimizer.init(trainable)                        # state for adapters only
    grads = jax.grad(lambda t: loss(lora.combine(t, frozen)))(trainable)
    lora.save_adapters("runs/x/adapters", lora.combine(trainable, frozen), {"base": "runs/base"})
    params = lora.load_adapters("runs/x/adapters", base_params)
    merged = lora.merge(params)                                  # plain kernels again

Layout: `tree.py` (the transforms) and `files.py` (adapters on disk).

A matched `*/kernel` leaf [in, out] becomes a `LoraWeight`: the base `w` (an
array, or a `jaxslm.quant.NF4Weight` for QLoRA) plus a tuple of adapters,
W = w + sum_i scales[i] * a[i] @ b[i]. `jaxslm.ops.dense` computes
x @ w + sum_i scales[i] * (x @ a[i]) @ b[i] and never forms W, so the model
code, the sampler and the trainer take LoRA trees as they are.
`add_adapter` on an already wrapped kernel appends one adapter (stacked
LoRA). A starts uniform in +-1/sqrt(in), B at zero, so a fresh adapter leaves
the model's output unchanged.

`split(params, trainable)` returns two trees. The trainable one is a plain
nested dict holding only the arrays to train, keyed by parameter path plus
the slot: `{"layers_0": {"attn": {"q_proj": {"kernel": {"a0": A, "b0": B}}}}}`
(slots "a<i>"/"b<i>" name adapter i counted from 0, "w" the base; a plain
leaf keeps its own path). The frozen one is `params` with those arrays
replaced by None, so it keeps the LoraWeights' static fields; `combine`
fills the Nones back. Give the optimizer and `jax.grad` only the trainable
tree: the optimizer keeps no state for frozen leaves, which stay bit-identical.
"""

from jaxslm.lora.files import adapter_fingerprint, load_adapters, read_adapter_meta, save_adapters
from jaxslm.lora.tree import (FORMAT, LoraConfig, LoraWeight, add_adapter, combine, count_params,
                              dequantize, flatten_paths, is_quantized, lora_paths,
                              map_with_paths, merge, nest_paths, split, strip, unmerge)

__all__ = ["FORMAT", "LoraConfig", "LoraWeight", "adapter_fingerprint", "add_adapter", "combine",
           "count_params", "dequantize", "flatten_paths", "is_quantized", "load_adapters",
           "lora_paths", "map_with_paths", "merge", "nest_paths", "read_adapter_meta",
           "save_adapters", "split", "strip", "unmerge"]
