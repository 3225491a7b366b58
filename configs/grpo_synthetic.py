"""GRPO on the synthetic math task, sized to run on a laptop CPU in minutes.

Warm-start first: pretrain (configs/default.py), then a short SFT in the
<reasoning>/<solution> format on synthetic problems, then GRPO:

  python launch/pretrain.py --workdir runs/default
  python benchmarks/grpo_learning.py --workdir runs/grpo_learning   # SFT + GRPO + held-out eval
  # the measured held-out gain (BENCHMARKS.md): a base pretrained 4,000 steps, G = 8
  python benchmarks/grpo_learning.py --base runs/base4k --pretrain-steps 4000 --steps 150 \
      --eval-problems 400 --eval-samples 4 --set grpo.G=8 \
      --set "grpo.temperatures=(0.6,0.6,0.8,0.8,1.0,1.0,1.2,1.2)"
  # or by hand, from an SFT workdir:
  python launch/grpo.py --config configs/grpo_synthetic.py --config.init_from=runs/sft_synth \
      --workdir runs/grpo_synth
"""

from jaxslm.config import grpo_config


def get_config():
  c = grpo_config("lora")
  c.data.update(source="synthetic", synthetic_max_steps=2, train_problems=2000, prompt_budget=128)
  c.lora.update(rank=8, alpha=16.0, dropout=0.0)
  # A constant, small beta: with this LR the study's KL target (0.02) drove beta
  # up to ~1.5 within 20 steps and froze learning (measured, runs of 60 steps).
  c.grpo.update(prompts_per_step=16, max_new_tokens=96, eps_tau=100.0, ref_update_every=50,
                beta=0.02, kl_target=0.0)
  c.train.update(steps=60, lr=3e-3, checkpoint_every=20)
  c.eval.update(problems=200, every=20, max_new_tokens=96, batch_size=100)
  return c
