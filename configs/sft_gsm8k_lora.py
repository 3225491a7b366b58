"""LoRA on GSM8K (first paper, stage 2; the Phi-2 study's r=8, alpha=16,
dropout 0.1 on attention q and v): "Question: ...\nAnswer: ...", prompt masked.

  python launch/finetune.py --config configs/sft_gsm8k_lora.py --config.init_from=CHECKPOINT \
      --config.data.path=../shared/data/gsm8k --workdir runs/sft_lora
"""

from jaxslm.config import finetune_config


def get_config():
  c = finetune_config("lora")
  return c
