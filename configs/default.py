"""The offline default run: synthetic grade-school math, a SentencePiece BPE
tokenizer trained on it, the `small` preset (0.9M params), ~3 minutes on a
2-core CPU.

  python launch/pretrain.py --config configs/default.py --workdir runs/default
"""

from jaxslm.config import base_config


def get_config():
  return base_config()
