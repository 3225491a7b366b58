"""Data: text sources, the token cache, and batch samplers.

  texts = iter_texts(config.data)                       # documents, any source
  ds = build_token_dataset(config.data, tokenizer, seq_len=256)   # cached, memory-mapped
  sampler = BatchSampler(ds.train, seq_len=256, global_batch_size=64, seed=0)
  rows = sampler.batch(step)                            # int32 [64, 257]
  val = eval_batches(ds.val, seq_len=256, batch_size=64, num_batches=8)

Submodules with heavier or optional dependencies (``synthetic``) are imported
on use, not here.
"""

from jaxslm.data.batches import BatchSampler, eval_batches
from jaxslm.data.sources import describe_source, iter_texts, source_key
from jaxslm.data.tokens import TokenDataset, build_token_dataset, open_token_dataset

__all__ = [
    "BatchSampler",
    "TokenDataset",
    "build_token_dataset",
    "describe_source",
    "eval_batches",
    "iter_texts",
    "open_token_dataset",
    "source_key",
]
