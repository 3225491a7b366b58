"""Convert checkpoints between Hugging Face and jaxslm.

  python launch/convert.py hf2jax --hf models/SmolLM2-135M --out runs/smol --dtype bfloat16
  python launch/convert.py gguf2jax --gguf models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --out runs/smol
  python launch/convert.py jax2hf --checkpoint runs/smol --out exports/smol
  python launch/convert.py jax2hf --checkpoint runs/sft --out exports/sft   # LoRA merged

hf2jax reads a directory saved with `save_pretrained` (config.json,
model.safetensors or shards + index, tokenizer.json or a SentencePiece
tokenizer.model); supported model types (`jaxslm.convert.supported_model_types()`):
gemma3 (and gemma3_text, or the text model of a multimodal Gemma 3), gpt2,
gpt_neox, llama, mistral, phi (Phi-2), phi3 (Phi-3 / Phi-4), qwen2, qwen3.
The tokenizer keeps whether transformers prepends BOS to plain text
(`add_bos_default`: Llama 3, Gemma, Mistral do), and `jaxslm.sample`, evaluation
and fine-tuning follow it. gguf2jax reads a llama.cpp GGUF file (architectures
llama, gemma3, phi3, qwen2, qwen3; quantized tensors are dequantized), its tokenizer
and chat template included; a damaged or hostile file is refused. jax2hf takes anything `jaxslm.load` opens and
writes config.json, safetensors and the tokenizer files that transformers
loads as is (BOS behaviour included). Exit codes: 0 ok, 2 bad input (one line
on stderr naming the file and the fix; nothing is left at --out). Warnings
(e.g. weights holding NaN) print on one line each.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from jaxslm import convert
from jaxslm.errors import UserError, report


def parse(argv):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="command", required=True)
  h = sub.add_parser("hf2jax", help="Hugging Face directory -> jaxslm checkpoint")
  h.add_argument("--hf", required=True, help="directory with config.json and *.safetensors")
  h.add_argument("--out", required=True, help="new checkpoint directory")
  h.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  h.add_argument("--tokenizer", default=None,
                 help="when --hf has no tokenizer.json: 'gpt2', a tokenizer.json or a .model")
  g = sub.add_parser("gguf2jax", help="GGUF file (llama.cpp) -> jaxslm checkpoint")
  g.add_argument("--gguf", required=True, help="a .gguf file")
  g.add_argument("--out", required=True, help="new checkpoint directory")
  g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  j = sub.add_parser("jax2hf", help="jaxslm checkpoint -> Hugging Face directory")
  j.add_argument("--checkpoint", required=True, help="run workdir, checkpoints/ or a step dir")
  j.add_argument("--out", required=True, help="new Hugging Face model directory")
  j.add_argument("--model-type", default=None,
                 help="force a family (default: the converted one, or inferred)")
  j.add_argument("--max-shard-gb", type=float, default=2.0)
  return ap.parse_args(argv)


def main(argv: list[str]) -> int:
  args = parse(argv)
  try:
    if args.command == "hf2jax":
      out = convert.hf_to_jaxslm(args.hf, args.out, dtype=args.dtype, tokenizer=args.tokenizer)
    elif args.command == "gguf2jax":
      out = convert.gguf_to_jaxslm(args.gguf, args.out, dtype=args.dtype)
    else:
      out = convert.jaxslm_to_hf(args.checkpoint, args.out, model_type=args.model_type,
                                 max_shard_bytes=int(args.max_shard_gb * 2**30))
  except (UserError, FileNotFoundError, FileExistsError) as e:
    return report(e)
  print(out)
  return 0


def _one_line(message, category, filename, lineno, line=None):
  return f"warning: {message}\n"


if __name__ == "__main__":
  warnings.formatwarning = _one_line   # e.g. NaN weights: one line naming the tensors
  sys.exit(main(sys.argv[1:]))
