"""Stacked LoRA (W = W0 + A1B1 + A2B2): adapter 1 from a finished LoRA run stays
frozen while adapter 2 trains on a second dataset (coding instructions, say;
any local .jsonl/.json or hub instruction data works).

  python launch/finetune.py --config configs/sft_gsm8k_stacked.py --config.init_from=CHECKPOINT \
      --config.stack_from=runs/sft_lora --config.data.source=instructions \
      --config.data.path=my_instructions.jsonl --workdir runs/sft_stacked
"""

from jaxslm.config import finetune_config


def get_config():
  c = finetune_config("stacked")
  c.stack_from = "runs/sft_lora"
  return c
