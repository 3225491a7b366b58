"""Perplexity of GSM8K reference solutions under each int8 form, against the
unquantized model (the quality check for int8 weight-only inference).

  python benchmarks/int8_quality.py   # expects /work/runs_real/smollm2 (gguf2jax of SmolLM2-135M-Instruct)
"""
import dataclasses, json, sys
import jaxslm
from jaxslm import quant
from jaxslm.data import gsm8k
from jaxslm.data.templates import get_template
from jaxslm.evaluation.perplexity import perplexity
m = jaxslm.load("/work/runs_real/smollm2")
split = gsm8k.load("test", "main", path="/work/shared/data/gsm8k")
probs, _ = gsm8k.select(split.examples, 50, seed=1234)
t = get_template("qa")
ctx = [t.prompt(p.question) for p in probs]
tgt = [t.target(p.answer, p.gold) for p in probs]
out = {}
for name, kw in [("fp32", None), ("int8_dot+emb", dict(embeddings=True, matmul="int8_dot")),
                 ("int8_dot", dict(embeddings=False, matmul="int8_dot")),
                 ("dequantize+emb", dict(embeddings=True, matmul="dequantize")),
                 ("dequantize", dict(embeddings=False, matmul="dequantize"))]:
  params = m.params if kw is None else quant.quantize_int8_params(m.params, **kw)
  r = perplexity(dataclasses.replace(m, params=params), tgt, ctx)
  out[name] = r["ppl"]
  print(name, r["ppl"], flush=True)
json.dump(out, open("/work/runs_real/int8_variants.json", "w"), indent=1)
