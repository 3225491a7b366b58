"""Sampling: a jitted prefill + KV-cache decode loop, and its slow reference.

    from jaxslm.sampling import generate
    out = generate(model_cfg, params, [[5, 9, 13], [7]], max_new_tokens=32,
                   temperature=0.8, top_p=0.95, seed=0, eos_id=tok.eos_id, tokenizer=tok)

`generate` (module `generate`) is the fast path every stage uses: notebooks
through `jaxslm.sample`, evaluation, GRPO rollouts, the agent. `engine` holds
its jitted prefill/decode, `filters` the next-token rules, `result` what it
returns (`Generation`, `Completion`). `sample_reference`
recomputes the whole forward pass for every token: slow, obviously correct,
and what the fast path is tested against.
"""

from jaxslm.sampling.engine import REASONS
from jaxslm.sampling.filters import Filters, filter_logits
from jaxslm.sampling.generate import Completion, Generation, bucket, generate
from jaxslm.sampling.reference import sample_reference

__all__ = ["REASONS", "Completion", "Filters", "Generation", "bucket", "filter_logits",
           "generate", "sample_reference"]
