"""Full fine-tuning on GSM8K: the same trainer with every leaf trainable.

  python launch/finetune.py --config configs/sft_gsm8k_full.py --config.init_from=CHECKPOINT \
      --config.data.path=../shared/data/gsm8k --workdir runs/sft_full
"""

from jaxslm.config import finetune_config


def get_config():
  c = finetune_config("full")
  return c
