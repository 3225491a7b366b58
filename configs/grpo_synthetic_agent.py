"""GRPO on the synthetic task with agent episodes as rollouts: Thought / Action:
calculator[expr] / Observation rounds until `Final Answer:` (or
`grpo.agent_max_steps`), all unfinished episodes of a step advanced together,
the token budget covering the whole episode. Observation tokens stay in the
context and are never learned. Rewards: accuracy of the final answer and
well-formed actions (`tool_format`). Held-out accuracy is measured as agent
episodes (eval_accuracy) and without tools, the model writing its own
observations (eval_none_accuracy).

  python launch/pretrain.py --workdir runs/default
  python launch/finetune.py --config configs/sft_synthetic_agent.py \
      --config.init_from=runs/default --workdir runs/sft_agent
  python launch/grpo.py --config configs/grpo_synthetic_agent.py \
      --config.init_from=runs/sft_agent --workdir runs/grpo_agent

The other settings are configs/grpo_synthetic.py's.
"""

import os

from jaxslm.config import load_config


def get_config():
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_synthetic.py"))
  c.data.update(template="react")
  c.grpo.update(tools="agent", max_new_tokens=160, agent_max_steps=4)
  c.rewards.update(names=("accuracy", "tool_format"), weights=(0.8, 0.2),
                   extractor="final-answer")
  c.eval.update(max_new_tokens=160)
  return c
