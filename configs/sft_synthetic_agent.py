"""Full fine-tuning on synthetic problems written as agent traces
(`jaxslm.data.synthetic.to_react`): the prompt is `Question: ...\nThought:`
(the "react" agent format), the target the rest of the trace, Thought /
Action: calculator[expr] / Observation / ... / Final Answer: N. Evaluated as
greedy agent episodes with the calculator: the warm start of GRPO with
`grpo.tools=agent`.

  python launch/pretrain.py --workdir runs/default
  python launch/finetune.py --config configs/sft_synthetic_agent.py \
      --config.init_from=runs/default --workdir runs/sft_agent
  python launch/grpo.py --config configs/grpo_synthetic_agent.py \
      --config.init_from=runs/sft_agent --workdir runs/grpo_agent

The settings are configs/sft_synthetic.py's; traces are longer than the
<reasoning>/<solution> text, so rows are 256 tokens (the default model's context).
"""

import os

from jaxslm.config import load_config


def get_config():
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_synthetic.py"))
  c.data.update(synthetic_format="agent")
  c.train.update(seq_len=256)
  c.eval.update(max_new_tokens=192)
  return c
