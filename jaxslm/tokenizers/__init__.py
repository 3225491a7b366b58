"""Tokenizers behind one interface: tiktoken (GPT-2 and OpenAI BPEs), SentencePiece
and Hugging Face `tokenizer.json` files (byte-level BPE: GPT-2, Llama 3, Qwen, SmolLM2).

    tok = get_tokenizer("gpt2")                   # tiktoken r50k_base, 50,257 ids
    tok = get_tokenizer("runs/tok/spm.model")     # a SentencePiece model file
    tok = get_tokenizer("models/SmolLM2-135M")    # a directory with tokenizer.json
    tok = train_sentencepiece(lines, vocab_size=1024)   # in memory, no temp files
    ids = tok.encode("Natalia sold 48 clips.\\n#### 72", add_eos=True)
    ids = tok.encode_chat([{"role": "user", "content": "2+2?"}])  # chat template + specials
    tok = from_spec(json.loads(json.dumps(tok.spec())))  # what checkpoints store

`encode` never turns user text into special tokens (tiktoken's `encode_ordinary`;
SentencePiece control pieces cannot be produced from text; a tokenizer.json
encodes special-token text as plain text) unless asked with `allow_special=True`,
which `encode_chat` uses for the rendered template (trusted text). Special ids are
otherwise added only through `add_bos` / `add_eos`. A tokenizer pickles through
its spec.

`tok.add_bos_default` says whether prompts start with BOS (`encode(text,
add_bos=None)`, `jaxslm.sample`, evaluation, fine-tuning): a Hugging Face
tokenizer read from its files says what transformers' `tokenizer(text)` does
(True for Llama 3, Gemma, Mistral), jaxslm's own tokenizers say False.

Modules: `base` (the interface), `tiktoken_tok`, `sentencepiece_tok`, `hf`
(tokenizer.json), `hf_bos` (BOS as transformers decides it), `chat` (Jinja chat
templates), `factory` (`get_tokenizer`, `from_spec`), `sp_export` (a
SentencePiece model as a tokenizer.json, for Hugging Face exports).
"""
from __future__ import annotations

from jaxslm.tokenizers.base import Tokenizer
from jaxslm.tokenizers.chat import render_chat_template
from jaxslm.tokenizers.factory import from_spec, get_tokenizer
from jaxslm.tokenizers.hf import HFTokenizer
from jaxslm.tokenizers.sentencepiece_tok import SentencePieceTokenizer, train_sentencepiece
from jaxslm.tokenizers.tiktoken_tok import TiktokenTokenizer

__all__ = [
    "HFTokenizer", "SentencePieceTokenizer", "TiktokenTokenizer", "Tokenizer", "from_spec",
    "get_tokenizer", "render_chat_template", "train_sentencepiece",
]
