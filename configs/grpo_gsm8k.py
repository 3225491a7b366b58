"""GRPO on GSM8K train with the study's defaults (G = 4 at 0.6/0.8/1.0/1.2,
adaptive ε and β, reference refreshed every 100 steps, rewards 0.2·format +
0.3·process + 0.5·accuracy) and LoRA during RL (as in Tina, "Tiny Reasoning Models via
LoRA"); scored on GSM8K test.

  python launch/grpo.py --config configs/grpo_gsm8k.py --config.init_from=CHECKPOINT \
      --config.data.path=../shared/data/gsm8k --workdir runs/grpo_gsm8k
"""

from jaxslm.config import grpo_config


def get_config():
  return grpo_config("lora")
