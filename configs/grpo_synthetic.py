"""GRPO on the synthetic math task, sized to run on a laptop CPU in minutes.

Warm-start first: pretrain (configs/default.py), then a short SFT in the
<reasoning>/<solution> format on synthetic problems, then GRPO:

  python launch/pretrain.py --workdir runs/default
  python benchmarks/grpo_learning.py --workdir runs/grpo_learning   # SFT + GRPO + held-out eval
  # or by hand, from an SFT workdir:
  python launch/grpo.py --config configs/grpo_synthetic.py --config.init_from=runs/sft_synth \
      --workdir runs/grpo_synth
"""

from jaxslm.config import grpo_config


def get_config():
  c = grpo_config("lora")
  c.data.update(source="synthetic", synthetic_max_steps=2, train_problems=2000, prompt_budget=128)
  c.lora.update(rank=8, alpha=16.0, dropout=0.0)
  c.grpo.update(prompts_per_step=8, max_new_tokens=64, eps_tau=100.0, ref_update_every=50)
  c.train.update(steps=60, lr=3e-3, checkpoint_every=20)
  c.eval.update(problems=100, every=20, max_new_tokens=64, batch_size=100)
  return c
