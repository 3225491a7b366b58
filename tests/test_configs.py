"""Every file in configs/ loads and runs one training step at tiny scale."""

import json
import pathlib

import pytest

from jaxslm.config import ConfigDict, load_config
from jaxslm.train.pretrain import run, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py")
                 if not p.name.startswith(("_", "sft_", "grpo_")))   # sft_*: test_finetune.py, grpo_*: test_grpo.py


def test_there_are_configs():
  names = {p.stem for p in CONFIGS}
  assert {"default", "tiny", "slm26m_owt", "gpt2_124m_owt"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_runs_one_step(path, tmp_path):
  c = load_config(path)
  assert isinstance(c, ConfigDict)
  assert "launch/pretrain.py" in (path.read_text().split('"""')[1]), "docstring shows its command"
  # The full-size config passes every data-free check, on 1 device and on an 8-GPU node.
  for devices in (1, 8):
    validate_config(c, device_count=devices, process_count=1)
  # Shrink: same architecture switches, tiny widths; local data instead of the hub.
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=0, head_dim=0, d_ff=64,
                 max_seq_len=64, dtype="float32")
  if c.data.source == "hf":
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Document {i}: " + "the cat sat. " * 20}) + "\n"
                              for i in range(40)))
    c.data.path = str(corpus)
  else:
    c.data.synthetic_documents = 400
    c.tokenizer.train_documents = 300
    c.tokenizer.vocab_size = c.model.vocab_size = 512
  c.data.val_fraction = 0.1
  c.train.update(steps=1, batch_size=2, grad_accum=1, seq_len=16, warmup_steps=0, eval_batches=1,
                 sample_prompts=())
  out = run(c, str(tmp_path / "w"))
  assert out["step"] == 1 and out["last"]["loss"] > 0


def test_unknown_synthetic_format_is_refused_before_any_data_work():
  from jaxslm.errors import UserError
  c = load_config(ROOT / "configs" / "react.py")
  assert c.data.synthetic_format == "react"
  c.data.synthetic_format = "chat"
  with pytest.raises(UserError, match="synthetic_format='chat'"):
    validate_config(c, device_count=1, process_count=1)
