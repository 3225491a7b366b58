"""GRPO on the synthetic task with the calculator inside the rollout: after the
model writes `<<expr=` the sampler writes the value as forced tokens, which stay
in the context and are never learned. Rewards: the study's three plus
well-formed calculator calls (`tool_format`). Held-out accuracy is measured with
the calculator (eval_accuracy) and without it (eval_none_accuracy).

  python launch/pretrain.py --workdir runs/default
  python launch/finetune.py --config configs/sft_synthetic_calculator.py \
      --config.init_from=runs/default --workdir runs/sft_calc
  python launch/grpo.py --config configs/grpo_synthetic_calculator.py \
      --config.init_from=runs/sft_calc --workdir runs/grpo_calc

The other settings are configs/grpo_synthetic.py's.
"""

import os

from jaxslm.config import load_config


def get_config():
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_synthetic.py"))
  c.grpo.update(tools="calculator")
  c.rewards.update(names=("format", "process", "accuracy", "tool_format"),
                   weights=(0.2, 0.3, 0.5, 0.1))
  return c
