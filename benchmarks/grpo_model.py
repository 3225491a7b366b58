"""The shared model of the GRPO benchmarks: a random-init jaxslm preset as a Hugging Face directory.

    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken_cache \\
        python benchmarks/grpo_model.py --preset slm26m --out runs/bench_grpo_model --check

Both sides of the GRPO comparison start from this one directory, so they hold
identical weights: TRL (`benchmarks/grpo_trl.py`) loads it with
`AutoModelForCausalLM` / `AutoTokenizer`, jaxslm with
`jaxslm.convert.hf_to_jaxslm(DIR, ...)`.

What it does: `jaxslm.models.init_params` (seeded) for the preset, then
`jaxslm.convert.export`, which picks the Hugging Face family that expresses the
preset exactly (slm26m: LayerNorm, tanh-GELU, biases, full-head RoPE, tied
embeddings -> `gpt_neox`, `GPTNeoXForCausalLM`, sequential residual).

The tokenizer: jaxslm's GPT-2 vocabulary is tiktoken's r50k_base, and `export`
writes tokenizer files only for a tokenizer.json tokenizer (a tiktoken one gets
none). So this script builds a byte-level BPE tokenizer.json from the tiktoken
ranks (vocabulary = every token's bytes in the GPT-2 byte-to-unicode alphabet,
merges recovered from the ranks, `<|endoftext|>` = 50256 as EOS and pad, no BOS,
as tiktoken), checks it encodes exactly as tiktoken on sample texts, and hands
it to `export` as a `jaxslm.tokenizers.HFTokenizer`, which writes tokenizer.json
and tokenizer_config.json that `AutoTokenizer.from_pretrained(DIR)` loads offline.
`--check` then loads the directory with transformers and compares its logits
with jaxslm's (fp32), and converts it back with `hf_to_jaxslm`.

`bench_prompts` gives both sides the same prompts (synthetic math questions,
left-truncated to a token budget). Note: transformers' tokenizer turns the
literal text "<|endoftext|>" inside a prompt into the special id, tiktoken's
`encode_ordinary` and jaxslm do not; the benchmark prompts never contain it.

Presets whose vocabulary is not GPT-2's (tiny, small: 512/1024 ids) get the
same files but their tokenizer does not fit the model; use slm26m or gpt2_124m.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

GPT2_ENCODING = "r50k_base"
EOT = "<|endoftext|>"


def byte_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in for every byte: printable Latin-1 bytes stand for
  themselves, the other bytes (controls, space, ...) take code points from 256 up."""
  keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _merge_of(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
  """The two parts whose merge makes `token` in rank-ordered BPE: run BPE on its
  bytes with only the ranks below its own; what is left is two pieces."""
  parts = [bytes([b]) for b in token]
  while len(parts) > 2:
    best, best_rank = None, rank
    for i in range(len(parts) - 1):
      r = ranks.get(parts[i] + parts[i + 1])
      if r is not None and r < best_rank:
        best, best_rank = i, r
    if best is None:
      raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower ranks")
    parts[best:best + 2] = [parts[best] + parts[best + 1]]
  return parts[0], parts[1]


def gpt2_tokenizer_json(encoding: str = GPT2_ENCODING) -> str:
  """A Hugging Face tokenizer.json (byte-level BPE) equivalent to a tiktoken encoding."""
  import tiktoken
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

  enc = tiktoken.get_encoding(encoding)
  specials = {enc.encode_single_token(t): t for t in enc.special_tokens_set}
  ordinary = [i for i in range(enc.n_vocab) if i not in specials]
  if ordinary != list(range(len(ordinary))):
    raise ValueError(f"{encoding}: special tokens inside the ordinary id range are not handled")
  ranks = {enc.decode_single_token_bytes(i): i for i in ordinary}
  uni = byte_to_unicode()

  def text(b: bytes) -> str:
    return "".join(uni[x] for x in b)

  vocab = {text(b): i for b, i in ranks.items()}
  merges = [tuple(text(p) for p in _merge_of(b, i, ranks))
            for b, i in sorted(ranks.items(), key=lambda kv: kv[1]) if len(b) > 1]
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
  # GPT-2's split regex (r50k_base uses the same one) and the byte-to-unicode map.
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  for i in sorted(specials):
    added = tok.add_special_tokens([AddedToken(specials[i], special=True, normalized=False)])
    if added != 1 or tok.token_to_id(specials[i]) != i:
      raise ValueError(f"special token {specials[i]!r} did not get id {i}")
  return tok.to_str()


def sample_texts(n: int = 200) -> list[str]:
  """Texts to compare encoders on: synthetic math prompts and answers, and odd text."""
  from jaxslm.data.synthetic import SyntheticMath
  gen = SyntheticMath(seed=0)
  out = []
  for i in range(n):
    p = gen.problem(i)
    out.append(f"Question: {p.question}\nAnswer: {p.answer}")
  out += ["  leading spaces\t\ttabs\n\n\nnewlines   trailing  ", "naïve café — ½ 3.14e-10 ¿¡",
          "日本語のテキスト and emoji 🙂👍🏽", "x<<3*12=36>>36 #### 36", "'s 't 're 've 'm 'll 'd",
          "\x00\x01 control \x7f bytes", "ALLCAPS123 mixed_Case-with-dashes/slashes"]
  return out


def build_tokenizer(encoding: str = GPT2_ENCODING):
  """jaxslm's `HFTokenizer` over the rebuilt tokenizer.json, checked against tiktoken."""
  import tiktoken
  from jaxslm.tokenizers import HFTokenizer

  enc = tiktoken.get_encoding(encoding)
  eot = enc.encode_single_token(EOT)
  tok = HFTokenizer(gpt2_tokenizer_json(encoding), eos_id=eot, pad_id=eot, name=f"gpt2-{encoding}")
  for t in sample_texts():
    want, got = enc.encode_ordinary(t), tok.encode(t)
    if want != got:
      raise RuntimeError(f"rebuilt tokenizer disagrees with tiktoken on {t!r}: {got} != {want}")
    if tok.decode(got) != t:
      raise RuntimeError(f"rebuilt tokenizer does not round-trip {t!r}")
  if tok.vocab_size != enc.n_vocab:
    raise RuntimeError(f"vocab sizes differ: {tok.vocab_size} != {enc.n_vocab}")
  return tok


PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


def bench_prompts(n: int, max_tokens: int, encode, decode) -> list[dict]:
  """The GRPO benchmarks' prompts, shared by both sides: "Question: {q}\\nAnswer:" for
  `SyntheticMath(seed=0).problem(i)`, i = 0..n-1, in order; one longer than
  `max_tokens` keeps its last `max_tokens` tokens (left truncation). Each item:
  {"text", "ids", "truncated"}; `encode(text)` of "text" gives back "ids"."""
  from jaxslm.data.synthetic import SyntheticMath
  gen = SyntheticMath(seed=0)
  out = []
  for i in range(n):
    text = PROMPT_TEMPLATE.format(question=gen.problem(i).question)
    ids = list(encode(text))
    truncated = len(ids) > max_tokens
    if truncated:
      ids = ids[-max_tokens:]
      text = decode(ids)
      if list(encode(text)) != ids:
        raise RuntimeError(f"prompt {i} does not re-encode to its truncated ids; choose another "
                           "max_tokens")
    out.append({"text": text, "ids": ids, "truncated": truncated})
  return out


def create(preset: str, out_dir: str, *, seed: int = 0, force: bool = False) -> dict:
  """Writes the Hugging Face directory; returns a summary (family, sizes, files)."""
  import jax
  from jaxslm.convert import export
  from jaxslm.models import ModelConfig, count_params, init_params

  cfg = ModelConfig.preset(preset, dtype="float32", param_dtype="float32")
  if os.path.exists(out_dir):
    if not force:
      raise FileExistsError(f"{out_dir!r} exists; pass --force to replace it")
    shutil.rmtree(out_dir)
  tok = build_tokenizer()
  if cfg.vocab_size != tok.vocab_size:
    print(f"warning: preset {preset!r} has vocab_size={cfg.vocab_size}, the GPT-2 tokenizer "
          f"{tok.vocab_size}; the tokenizer files will not fit the model", file=sys.stderr)
  params = init_params(cfg, jax.random.key(seed))
  export(cfg, params, tok, out_dir)
  with open(os.path.join(out_dir, "config.json")) as f:
    hf = json.load(f)
  return {"preset": preset, "seed": seed, "out": os.path.abspath(out_dir),
          "model_type": hf["model_type"], "architecture": hf["architectures"][0],
          "params": count_params(cfg)["total"], "files": sorted(os.listdir(out_dir))}


def check(out_dir: str, preset: str) -> dict:
  """transformers loads the directory offline and its logits match jaxslm's; the
  tokenizer encodes as tiktoken; hf_to_jaxslm reads it back."""
  import jax.numpy as jnp
  import numpy as np
  import tiktoken
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  from jaxslm.convert import hf_to_jaxslm
  from jaxslm.loading import load
  from jaxslm.models import Decoder

  hf_tok = AutoTokenizer.from_pretrained(out_dir)
  enc = tiktoken.get_encoding(GPT2_ENCODING)
  for t in sample_texts(50):
    if hf_tok(t)["input_ids"] != enc.encode_ordinary(t):
      raise RuntimeError(f"AutoTokenizer disagrees with tiktoken on {t!r}")
  model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
  ids = enc.encode_ordinary(sample_texts(1)[0])[:48]
  with torch.no_grad():
    hf_logits = model(torch.tensor([ids])).logits.numpy()
  with tempfile.TemporaryDirectory() as tmp:
    ck = hf_to_jaxslm(out_dir, os.path.join(tmp, "ckpt"), dtype="float32")
    loaded = load(ck)
    jx_logits = np.asarray(Decoder(loaded.model_cfg).apply({"params": loaded.params},
                                                           jnp.asarray([ids], jnp.int32)))
    same_tok = loaded.tokenizer.encode(sample_texts(1)[0]) == enc.encode_ordinary(
        sample_texts(1)[0])
  diff = float(np.max(np.abs(hf_logits - jx_logits)))
  scale = float(np.max(np.abs(hf_logits)))
  result = {"hf_class": type(model).__name__, "hf_tokenizer_class": type(hf_tok).__name__,
            "hf_params": sum(p.numel() for p in model.parameters()),
            "logits_max_abs_diff": diff, "logits_max_abs": scale,
            "jaxslm_roundtrip_tokenizer_matches": same_tok}
  if not diff <= 1e-3 * max(scale, 1.0) or not same_tok:
    raise RuntimeError(f"check failed: {result}")
  return result


def main(argv: list[str]) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="slm26m")
  ap.add_argument("--out", default="runs/bench_grpo_model")
  ap.add_argument("--seed", type=int, default=0, help="parameter init seed")
  ap.add_argument("--force", action="store_true", help="replace --out if it exists")
  ap.add_argument("--check", action="store_true",
                  help="load with transformers, compare logits with jaxslm, convert back")
  args = ap.parse_args(argv)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  t0 = time.perf_counter()
  info = create(args.preset, args.out, seed=args.seed, force=args.force)
  info["create_s"] = round(time.perf_counter() - t0, 2)
  if args.check:
    info["check"] = check(args.out, args.preset)
  print(json.dumps(info, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
