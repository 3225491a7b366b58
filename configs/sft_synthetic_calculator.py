"""Full fine-tuning on synthetic problems whose <reasoning> keeps the calculator
annotations (`3*12=<<3*12=36>>36`), evaluated with the sampler's calculator
hook: the warm start of GRPO with `grpo.tools=calculator`.

  python launch/pretrain.py --workdir runs/default
  python launch/finetune.py --config configs/sft_synthetic_calculator.py \
      --config.init_from=runs/default --workdir runs/sft_calc
  python launch/grpo.py --config configs/grpo_synthetic_calculator.py \
      --config.init_from=runs/sft_calc --workdir runs/grpo_calc

The settings are configs/sft_synthetic.py's, with `data.synthetic_format=calculator`
and rows of 256 tokens (the default model's context): at 192, about 30% of the
annotated two-step solutions are too long and dropped (counted in the run's data info).
"""

import os

from jaxslm.config import load_config


def get_config():
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_synthetic.py"))
  c.data.update(synthetic_format="calculator", keep_annotations=True)
  c.train.update(seq_len=256)
  return c
