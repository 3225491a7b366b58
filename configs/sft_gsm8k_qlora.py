"""QLoRA on GSM8K: base projection matrices stored in NF4 (block 64, double-quantized
scales), dequantized on the fly; LoRA (r=8, alpha=16) trains on top.

  python launch/finetune.py --config configs/sft_gsm8k_qlora.py --config.init_from=CHECKPOINT \
      --config.data.path=../shared/data/gsm8k --workdir runs/sft_qlora
"""

from jaxslm.config import finetune_config


def get_config():
  c = finetune_config("qlora")
  c.lora.targets = "all"   # QLoRA adapts every linear layer
  return c
