"""The offline default run, trained on agent traces: the synthetic problems
written as Thought / Action: calculator[expr] / Observation / Final Answer
(`jaxslm.data.synthetic.to_react`), so the model learns to call the
calculator from `jaxslm.agent.run_agent` (with `AgentFormat(header="")`).

  python launch/pretrain.py --config configs/react.py --workdir runs/react
  python benchmarks/agent_synthetic.py --checkpoint runs/react --problems 200
"""

from jaxslm.config import base_config


def get_config():
  c = base_config()
  c.data.synthetic_format = "react"
  # Traces are ~1.6x longer than Question/Answer text: windows of 256 (the
  # model's whole context), half as many per batch, the same tokens per step.
  c.train.update(seq_len=256, batch_size=8)
  c.train.sample_prompts = ("Question: Tom has 3 boxes of 12 apples. He eats 5 apples. "
                            "How many apples does Tom have left?\nThought:",)
  return c
