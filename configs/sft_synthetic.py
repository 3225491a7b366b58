"""Full fine-tuning on synthetic math problems in the <reasoning>/<solution>
format: the warm start GRPO (configs/grpo_synthetic.py) begins from. Minutes
on a laptop CPU, from the default pretraining run:

  python launch/pretrain.py --workdir runs/default
  python launch/finetune.py --config configs/sft_synthetic.py --config.init_from=runs/default \
      --workdir runs/sft_synth
  python launch/grpo.py --config configs/grpo_synthetic.py --config.init_from=runs/sft_synth \
      --workdir runs/grpo_synth

The problems come from `jaxslm.data.synthetic` (indices 0..N-1, as GRPO's
prompts do); the evaluation at each `train.eval_every` scores held-out
synthetic problems (indices from 1,000,000, never trained on).
"""

from jaxslm.config import finetune_config


def get_config():
  c = finetune_config("full")
  c.data.update(source="synthetic", synthetic_problems=3000, synthetic_max_steps=2,
                template="structured", val_examples=100)
  c.train.update(steps=150, batch_size=16, seq_len=192, lr=1e-3, min_lr=1e-4, warmup_steps=15,
                 log_every=10, eval_every=150, checkpoint_every=150)
  c.eval.update(problems=100, max_new_tokens=128, rouge=False)
  return c
