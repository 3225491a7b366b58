"""Hugging Face <-> jaxslm checkpoint conversion, by table (one per family).

    from jaxslm import convert
    convert.hf_to_jaxslm("models/SmolLM2-135M", "runs/smol", dtype="bfloat16")
    convert.jaxslm_to_hf("runs/smol", "exports/smol")      # LoRA adapters merged first
    cfg = convert.config_from_hf("models/SmolLM2-135M/config.json")
    convert.supported_model_types()
    # ['gemma3', 'gemma3_text', 'gpt2', 'gpt_neox', 'llama', 'mistral', 'phi', 'phi3',
    #  'qwen2', 'qwen3']

    convert.gguf_to_jaxslm("models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf", "runs/smol-gguf")

Command line: `python launch/convert.py hf2jax --hf DIR --out CHECKPOINT`,
`python launch/convert.py gguf2jax --gguf FILE.gguf --out CHECKPOINT` and
`python launch/convert.py jax2hf --checkpoint CHECKPOINT --out DIR`.

Layout: `table.py` (rules, families, shape checks), `registry.py` (the
families by model type), `hf_config.py` (config.json fields the families
share), one module per family
group (`gpt2.py`; `gpt_neox.py`, the home of jaxslm's own GPT-style presets;
`llama.py`: Llama, Mistral, Qwen2, Qwen3; `phi.py`: Phi-2, Phi-3/Phi-4;
`gemma3.py`: Gemma 3, text-only and the text model of a multimodal one), `files.py`
(config.json; safetensors memory-mapped tensor by tensor, and written as a
stream), `store.py` (the Orbax side: a tree written in place, leaves restored
a batch at a time), `checkpoints.py` (the two directions). Neither direction
holds two copies of a model: hf2jax keeps the converted tree plus one
tensor, jax2hf (of a plain checkpoint) a small batch of tensors. GGUF files
(llama.cpp's format): `gguf.py` (the conversion), `gguf_header.py` (a bounded
header reader that checks every length and offset first), `gguf_arch.py`
(metadata and tensor names as Hugging Face ones), `gguf_tokenizer.py`.
"""

from __future__ import annotations

from jaxslm.convert.checkpoints import config_from_hf, export, hf_to_jaxslm, jaxslm_to_hf
from jaxslm.convert.gguf import gguf_to_jaxslm
from jaxslm.convert.registry import supported_model_types

__all__ = ["config_from_hf", "export", "gguf_to_jaxslm", "hf_to_jaxslm", "jaxslm_to_hf",
           "supported_model_types"]
