"""GPT-2 small's shape (124M, RoPE) on OpenWebText with r50k_base, nanoGPT-style
schedule (6e-4 peak, 2k warmup, cosine to 6e-5), 0.5M-token batches (512 x 1024) via
gradient accumulation.

  python launch/pretrain.py --config configs/gpt2_124m_owt.py --workdir runs/gpt2_124m
"""

from jaxslm.config import openwebtext_config


def get_config():
  c = openwebtext_config("gpt2_124m", max_documents=2_000_000)
  c.train.update(steps=50000, batch_size=512, grad_accum=8, seq_len=1024, lr=6e-4, min_lr=6e-5,
                 warmup_steps=2000, eval_every=1000, eval_batches=20, log_every=20,
                 checkpoint_every=2000, sample_prompts=("The meaning of life is",),
                 sample_tokens=64)
  return c
