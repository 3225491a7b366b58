"""A seconds-long smoke run of the `tiny` preset (RMSNorm, SwiGLU, GQA, untied).

  python launch/pretrain.py --config configs/tiny.py --workdir runs/tiny
"""

from jaxslm.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("tiny")
  c.tokenizer.vocab_size = 512
  c.data.synthetic_documents = 3000
  c.tokenizer.train_documents = 2000
  c.train.update(steps=100, batch_size=16, seq_len=64, warmup_steps=10, eval_every=50,
                 checkpoint_every=50, log_every=10)
  return c
