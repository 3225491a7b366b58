"""The first paper's pretraining: the slm26m preset (12 layers, d 384, 6 heads,
FFN 1536, RoPE, GELU, LayerNorm, tied embeddings; 40.6M parameters counted
exactly, 21.3M non-embedding) on OpenWebText with the GPT-2 vocabulary
(tiktoken r50k_base), AdamW, linear warmup + cosine decay, clipping at 1.0.

  python launch/pretrain.py --config configs/slm26m_owt.py --workdir runs/slm26m_owt

Streams `Skylion007/openwebtext` through `datasets` (needs the hub; when the
installed `datasets` refuses the repository's loading script, the hub's Parquet
export is read instead). Offline, point it at a local copy:
--config.data.hf_name=/path/to/owt or --config.data.path='owt/*.jsonl'.
data.max_documents bounds how much of the 8M documents is tokenized.
"""

from jaxslm.config import openwebtext_config


def get_config():
  c = openwebtext_config("slm26m", max_documents=1_000_000)
  c.train.update(steps=20000, batch_size=64, grad_accum=1, seq_len=1024, lr=6e-4, min_lr=6e-5,
                 warmup_steps=1000, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0,
                 eval_every=500, eval_batches=20, log_every=20, checkpoint_every=1000,
                 sample_prompts=("The meaning of life is", "Question: What is 12 times 7?\nAnswer:"),
                 sample_tokens=64)
  return c
