"""NF4 quantization (jaxslm/quant/): codebook, round trips, bounds, bytes, pytrees.

Run: python -m pytest -q tests/test_quant.py   (add -s to see measured numbers)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslm import quant
from jaxslm.errors import UserError
from jaxslm.quant import NF4_CODEBOOK, NF4Weight, dequantize, nf4, quantize_nf4, quantize_params

# The 16 NF4 levels as published with QLoRA (Dettmers et al. 2023, appendix E):
# the reference only, the library computes its codebook from the construction.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
MAX_GAP = float(np.max(np.diff(np.asarray(PUBLISHED_NF4))))


def gaussian(shape, std=0.02, seed=0) -> np.ndarray:
  return (std * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def block_absmax(w: np.ndarray, block: int = 64) -> np.ndarray:
  """Per-element absmax of its block (numpy reference), shape of w."""
  flat = w.reshape(-1)
  pad = -flat.size % block
  blocks = np.pad(flat, (0, pad)).reshape(-1, block)
  absmax = np.repeat(np.abs(blocks).max(axis=1), block)[: flat.size]
  return absmax.reshape(w.shape)


def deq(q: NF4Weight) -> np.ndarray:
  return np.asarray(dequantize(q, jnp.float32))


# --- codebook -------------------------------------------------------------------------------

def test_codebook_matches_published_values():
  assert NF4_CODEBOOK.dtype == np.float32 and NF4_CODEBOOK.shape == (16,)
  np.testing.assert_allclose(NF4_CODEBOOK, PUBLISHED_NF4, atol=1e-4, rtol=0)
  assert np.all(np.diff(NF4_CODEBOOK) > 0)
  assert NF4_CODEBOOK[0] == -1.0 and NF4_CODEBOOK[7] == 0.0 and NF4_CODEBOOK[-1] == 1.0
  assert np.sum(NF4_CODEBOOK < 0) == 7 and np.sum(NF4_CODEBOOK > 0) == 8


def test_codebook_is_symmetric_ish():
  """Both halves span [0, 1] and interleave: the negatives mirrored sit between positives."""
  neg = -NF4_CODEBOOK[:7][::-1]          # 7 values in (0, 1]
  pos = NF4_CODEBOOK[8:]                 # 8 values in (0, 1]
  assert abs(float(NF4_CODEBOOK.mean())) < 0.05
  for i, v in enumerate(neg[:-1]):
    assert pos[i] < v < pos[i + 1]
  assert neg[-1] == pos[-1] == 1.0


# --- round trips ----------------------------------------------------------------------------

def test_exact_codebook_values_round_trip_exactly():
  """Blocks made of codebook levels times a scale come back bit for bit."""
  levels = np.tile(NF4_CODEBOOK, 4)                       # 64 values, absmax 1
  w = np.stack([levels * 0.5, levels[::-1] * 3.0]).astype(np.float32)   # [2, 64]
  q = quantize_nf4(jnp.asarray(w), double_quant=False)
  np.testing.assert_array_equal(deq(q), w)
  codes = np.asarray(nf4._unpack_codes(q))
  np.testing.assert_array_equal(codes[:16], np.arange(16))
  assert int(q.codes_n[0]) == 0x01                        # high nibble first


def test_gaussian_error_bounded_per_element():
  w = gaussian((256, 384))
  q = quantize_nf4(jnp.asarray(w), double_quant=False)
  d = deq(q)
  assert d.shape == (256, 384) and d.dtype == np.float32
  absmax = block_absmax(w)
  err = np.abs(d - w)
  # Every element: at most half the largest codebook gap times its block absmax.
  assert np.all(err <= absmax * MAX_GAP / 2 + 1e-7)
  # And it is the nearest level: no other level is closer to w / absmax.
  y = w / absmax
  nearest = np.min(np.abs(y[..., None] - NF4_CODEBOOK), axis=-1)
  assert np.all(np.abs(d / absmax - y) <= nearest + 1e-5)
  rel = float(np.mean(err) / np.std(w))
  print(f"NF4 mean abs error / std (256x384, std 0.02, no double quant): {rel:.4f}")
  assert 0.03 < rel < 0.1


def test_double_quant_scales_within_8bit_bound():
  w = gaussian((256, 384), seed=1)
  q = quantize_nf4(jnp.asarray(w), double_quant=True, scale_block_size=256)
  assert q.double_quant and q.scales_b is None
  assert q.scale_codes_b.dtype == jnp.int8 and q.scale_scales_s.dtype == jnp.float32
  scales = np.abs(w.reshape(-1, 64)).max(axis=1)          # 1536 blocks -> 6 groups
  dev = scales - scales.mean()
  bound = np.repeat(np.abs(dev.reshape(-1, 256)).max(axis=1), 256) / (2 * 127)
  got = np.asarray(quant.block_scales(q))
  assert got.shape == scales.shape
  assert np.all(np.abs(got - scales) <= bound + 1e-8)
  np.testing.assert_allclose(float(q.scale_offset), scales.mean(), rtol=1e-6)
  assert np.max(np.abs(got - scales) / scales) < 0.01     # < 1% relative per block

  single = quantize_nf4(jnp.asarray(w), double_quant=False)
  np.testing.assert_array_equal(np.asarray(q.codes_n), np.asarray(single.codes_n))
  d_dq, d_single = deq(q), deq(single)
  # Same codes, scales differ by <= bound, codebook |c| <= 1.
  assert np.all(np.abs(d_dq - d_single) <= np.repeat(bound, 64).reshape(w.shape) + 1e-8)
  err_dq = float(np.mean(np.abs(d_dq - w)) / np.std(w))
  err_single = float(np.mean(np.abs(d_single - w)) / np.std(w))
  print(f"mean abs error / std: double quant {err_dq:.4f}, single {err_single:.4f}")
  assert err_dq < err_single * 1.02


@pytest.mark.parametrize("shape", [(33, 70), (1, 1), (7, 100), (129, 65)])
@pytest.mark.parametrize("double_quant", [False, True])
def test_odd_sizes_are_padded(shape, double_quant):
  w = gaussian(shape, std=1.0, seed=sum(shape))
  q = quantize_nf4(jnp.asarray(w), double_quant=double_quant)
  n_blocks = math.ceil(w.size / 64)
  assert q.shape == shape and q.ndim == 2 and q.size == w.size
  assert q.codes_n.shape == (n_blocks * 32,) and q.codes_n.dtype == jnp.uint8
  if double_quant:
    assert q.scale_codes_b.shape == (math.ceil(n_blocks / 256) * 256,)
    assert q.scale_scales_s.shape == (math.ceil(n_blocks / 256),)
  d = deq(q)
  assert d.shape == shape
  slack = 0.0 if not double_quant else 0.01 * np.abs(w).max()
  assert np.all(np.abs(d - w) <= block_absmax(w) * MAX_GAP / 2 + slack + 1e-6)


def test_zeros_and_constant_blocks():
  w = gaussian((4, 64), std=1.0, seed=3)
  w[1] = 0.0          # an all-zero block
  w[2] = 0.5          # a constant block
  w[3, ::3] = 0.0     # scattered exact zeros
  for dq in (False, True):
    d = deq(quantize_nf4(jnp.asarray(w), double_quant=dq))
    assert np.all(d[w == 0.0] == 0.0)
    if dq:
      np.testing.assert_allclose(d[2], 0.5, rtol=0.01)
      assert np.all(d[2] == d[2, 0])
    else:
      np.testing.assert_array_equal(d[2], w[2])
  zeros = quantize_nf4(jnp.zeros((10, 30)))
  assert np.all(deq(zeros) == 0.0) and np.all(np.isfinite(np.asarray(quant.block_scales(zeros))))


# --- bytes ----------------------------------------------------------------------------------

def test_nbytes_and_ratio_to_bf16():
  n_in, n_out = 384, 1536
  n = n_in * n_out
  w = jnp.asarray(gaussian((n_in, n_out)))
  single = quantize_nf4(w, double_quant=False)
  assert single.nbytes == n // 2 + 4 * (n // 64)
  q = quantize_nf4(w)
  blocks = n // 64
  overhead = blocks + 4 * math.ceil(blocks / 256) + 4      # int8 codes, f32 group scales, mean
  assert q.nbytes == n // 2 + overhead and q.scale_nbytes == overhead
  ratio = q.nbytes / (2 * n)
  print(f"384x1536: nf4 {q.nbytes} B (scales {overhead} B) vs bf16 {2 * n} B, ratio {ratio:.4f}; "
        f"without double quant {single.nbytes / (2 * n):.4f}")
  assert 0.25 <= ratio <= 0.27
  assert single.nbytes / (2 * n) > 0.28

  report = quant.quantized_bytes_report({"mlp": {"up_proj": {"kernel": q}}, "b": jnp.ones(3)})
  assert report["matrices"] == 1 and report["params"] == n
  assert report["quantized_bytes"] == q.nbytes and report["bf16_bytes"] == 2 * n
  assert report["scale_overhead_bytes"] == overhead and report["code_bytes"] == n // 2
  assert report["ratio"] == pytest.approx(ratio)
  assert report["bits_per_param"] == pytest.approx(4 + 8 * overhead / n)
  with pytest.raises(UserError, match="no NF4Weight"):
    quant.quantized_bytes_report({"k": w})


# --- jit and pytrees ------------------------------------------------------------------------

def test_jit_dequantize_and_quantize_match_eager():
  w = jnp.asarray(gaussian((96, 80), seed=5))
  q = quantize_nf4(w)
  eager = dequantize(q, jnp.bfloat16)
  jitted = jax.jit(dequantize, static_argnums=1)(q, jnp.bfloat16)
  assert jitted.dtype == jnp.bfloat16 and jitted.shape == (96, 80)
  np.testing.assert_array_equal(np.asarray(jitted, np.float32), np.asarray(eager, np.float32))
  np.testing.assert_allclose(np.asarray(eager, np.float32), deq(q), rtol=1e-2, atol=1e-6)
  assert dequantize(q).dtype == jnp.float32              # default: the original dtype

  qj = jax.jit(quantize_nf4)(w)
  for a, b in zip(jax.tree.leaves(qj), jax.tree.leaves(q)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  x = jnp.ones((2, 96))
  y = jax.jit(lambda x, k: x @ dequantize(k, jnp.float32))(x, q)
  np.testing.assert_allclose(np.asarray(y), np.asarray(x @ deq(q)), rtol=1e-5, atol=1e-5)


def test_nf4weight_is_a_pytree():
  q = quantize_nf4(jnp.asarray(gaussian((64, 48))))
  leaves, treedef = jax.tree.flatten(q)
  assert len(leaves) == 4                                 # codes, scale codes, scales, offset
  mapped = jax.tree.map(lambda a: a, q)
  assert isinstance(mapped, NF4Weight) and mapped.shape == (64, 48) and mapped.block_size == 64
  through = jax.jit(lambda t: t)({"k": q})["k"]
  assert isinstance(through, NF4Weight)
  np.testing.assert_array_equal(deq(through), deq(q))
  assert jax.tree.structure(through) == treedef
  single = quantize_nf4(jnp.asarray(gaussian((64, 48))), double_quant=False)
  assert jax.tree.structure(single) != treedef            # static metadata is in the treedef


# --- parameter-tree transform ---------------------------------------------------------------

def small_params():
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))
  return {
      "embed": {"embedding": f(50, 16)},
      "layers_0": {
          "attn": {"q_proj": {"kernel": f(16, 16), "bias": f(16)},
                   "o_proj": {"kernel": f(16, 16)}},
          "mlp": {"up_proj": {"kernel": f(16, 40)}, "conv_proj": {"kernel": f(3, 4, 4)}},
          "norm": {"scale": f(16)},
      },
  }


def test_quantize_params_replaces_only_matching_2d_leaves():
  params = small_params()
  out = quantize_params(params)
  layer = out["layers_0"]
  for kernel in (layer["attn"]["q_proj"]["kernel"], layer["attn"]["o_proj"]["kernel"],
                 layer["mlp"]["up_proj"]["kernel"]):
    assert quant.is_quantized(kernel)
  assert not quant.is_quantized(layer["mlp"]["conv_proj"]["kernel"])   # 3-D: kept
  assert layer["attn"]["q_proj"]["bias"] is params["layers_0"]["attn"]["q_proj"]["bias"]
  assert out["embed"]["embedding"] is params["embed"]["embedding"]
  assert jax.tree.structure(params["layers_0"]["norm"]) == jax.tree.structure(layer["norm"])

  some = quantize_params(params, targets=r"attn/(q|v)_proj/kernel$", block_size=32,
                         double_quant=False)
  q = some["layers_0"]["attn"]["q_proj"]["kernel"]
  assert q.block_size == 32 and not q.double_quant
  assert not quant.is_quantized(some["layers_0"]["attn"]["o_proj"]["kernel"])
  np.testing.assert_allclose(deq(q), np.asarray(params["layers_0"]["attn"]["q_proj"]["kernel"]),
                             atol=0.5)
  # Quantizing more of an already-quantized tree keeps the existing NF4 leaves.
  more = quantize_params(some, targets=r"o_proj/kernel$")
  assert more["layers_0"]["attn"]["q_proj"]["kernel"] is q
  assert quant.is_quantized(more["layers_0"]["attn"]["o_proj"]["kernel"])


def test_quantize_params_errors_name_the_paths():
  params = small_params()
  with pytest.raises(UserError) as e:
    quantize_params(params, targets=r"k_proj/kernel$")
  msg = str(e.value)
  assert "k_proj/kernel$" in msg
  for path in ("embed/embedding", "layers_0/attn/q_proj/kernel", "layers_0/mlp/up_proj/kernel"):
    assert path in msg
  assert "conv_proj" not in msg and "bias" not in msg      # only 2-D paths are listed
  with pytest.raises(UserError, match="already quantized"):
    quantize_params(quantize_params(params), targets=r"q_proj/kernel$")
  with pytest.raises(UserError, match="regular expression"):
    quantize_params(params, targets="(")


def test_bad_inputs_raise_user_error():
  with pytest.raises(UserError, match=r"\(3, 4, 4\)"):
    quantize_nf4(jnp.ones((3, 4, 4)))
  with pytest.raises(UserError, match="int32"):
    quantize_nf4(jnp.ones((4, 4), jnp.int32))
  with pytest.raises(UserError, match="block_size=63"):
    quantize_nf4(jnp.ones((4, 4)), block_size=63)
  with pytest.raises(UserError, match="scale_block_size=0"):
    quantize_nf4(jnp.ones((4, 4)), scale_block_size=0)
  with pytest.raises(UserError, match="NF4Weight"):
    dequantize(jnp.ones((4, 4)))


# --- int8 weight-only inference ---------------------------------------------------------------

from jaxslm import ops  # noqa: E402
from jaxslm.models import Decoder, ModelConfig, init_params  # noqa: E402


def _int8_model(**kw):
  cfg = ModelConfig.preset("tiny", **kw)
  return cfg, init_params(cfg, jax.random.PRNGKey(0))


def test_int8_round_trip_error_is_half_a_step_per_channel():
  w = gaussian((96, 40), seed=3)
  w[:, 5] = 0.0                                    # an all-zero channel stays exact
  q = quant.quantize_int8(jnp.asarray(w))
  assert q.q.dtype == jnp.int8 and q.scale.shape == (40,) and q.nbytes == 96 * 40 + 4 * 40
  back = np.asarray(quant.dequantize(q, jnp.float32))
  step = np.abs(w).max(axis=0) / 127
  assert np.all(np.abs(back - w) <= step / 2 + 1e-8)
  assert np.all(back[:, 5] == 0) and np.abs(np.asarray(q.q)).max() == 127
  rows = quant.quantize_int8(jnp.asarray(w), channel_axis=0)      # per-row (embedding)
  assert rows.scale.shape == (96,)
  assert np.all(np.abs(np.asarray(quant.dequantize(rows)) - w)
                <= np.abs(w).max(axis=1, keepdims=True) / 254 + 1e-8)


@pytest.mark.parametrize("matmul", ["int8_dot", "dequantize"])
def test_int8_matmul_matches_float_reference(matmul):
  """Both matmul forms against x @ dequantize(w) in float64 (numpy), error bounded
  by the activation rounding (int8_dot) or float32 rounding (dequantize)."""
  x = np.random.default_rng(1).standard_normal((3, 5, 96)).astype(np.float32)
  q = quant.quantize_int8(jnp.asarray(gaussian((96, 40), seed=4)), matmul=matmul)
  ref = x.astype(np.float64) @ np.asarray(quant.dequantize(q), np.float64)
  got = np.asarray(ops.dense(jnp.asarray(x), q, jnp.float32))
  if matmul == "dequantize":
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
  else:   # each activation moves at most half its token's step: |dy| <= step/2 * sum|w|
    bound = (np.abs(x).max(-1, keepdims=True) / 254) * np.abs(
        np.asarray(quant.dequantize(q))).sum(0)
    assert np.all(np.abs(got - ref) <= bound + 1e-5)
    assert np.abs(got - ref).max() > 0                       # activations really were rounded
  tied = quant.quantize_int8(jnp.asarray(gaussian((40, 96), seed=5)), 0, matmul)
  ref_t = x.astype(np.float64) @ np.asarray(quant.dequantize(tied), np.float64).T
  got_t = np.asarray(ops.unembed(jnp.asarray(x), tied, jnp.float32))
  assert np.abs(got_t - ref_t).max() < 0.02 * np.abs(ref_t).max()


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=True)])
def test_int8_forward_close_to_float32(kw):
  cfg, params = _int8_model(**kw)
  msgs = []
  q = quant.quantize_int8_params(params, embeddings=True, log=msgs.append)
  report = quant.int8_report(q)
  # 7 projections per layer, the embedding, and an untied head
  assert report["int8_matrices"] == 7 * cfg.n_layers + 1 + (0 if cfg.tie_embeddings else 1)
  assert report["kept_in_float"] == [] and msgs == []
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 24), 0, cfg.vocab_size)
  apply = jax.jit(lambda p, t: Decoder(cfg).apply({"params": p}, t))
  ref, got = apply(params, tokens), apply(q, tokens)
  err = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
  assert 0 < err < 0.05, err
  # The most likely next token agrees almost everywhere.
  assert float(jnp.mean(jnp.argmax(got, -1) == jnp.argmax(ref, -1))) > 0.9


def test_int8_decode_through_generate_equals_int8_full_forward():
  """Greedy KV-cache decode of an int8 tree picks each token the full int8
  forward over the same prefix ranks first."""
  from jaxslm.sampling.generate import generate
  cfg, params = _int8_model()
  q = quant.quantize_int8_params(params, matmul="dequantize")
  prompt = [1, 2, 3, 4, 5]
  out = generate(cfg, q, [prompt], max_new_tokens=6).completions[0]
  assert len(out.tokens) == 6 and np.all(np.isfinite(out.logprobs))
  logits = jax.jit(Decoder(cfg).apply)({"params": q}, jnp.asarray([prompt + out.tokens]))[0]
  want = np.asarray(jnp.argmax(logits[len(prompt) - 1:-1], -1))
  assert out.tokens == want.tolist()
  logp = jax.nn.log_softmax(logits[len(prompt) - 1:-1], -1)[jnp.arange(6), want]
  np.testing.assert_allclose(out.logprobs, logp, atol=2e-3)   # fusion order differs


def test_int8_errors_and_small_kernels():
  cfg, params = _int8_model()
  with pytest.raises(UserError, match="valid values: none, int8, int8-dynamic"):
    quant.apply_quantize(params, "int4")
  assert quant.apply_quantize(params, None) is params
  nf4 = quant.quantize_params(params)
  with pytest.raises(UserError, match="NF4"):
    quant.apply_quantize(nf4, "int8")
  with pytest.raises(UserError, match="matches no float 2-D"):
    quant.quantize_int8_params(params, targets=r"nothing$", embeddings=False)
  small = {"a_proj": {"kernel": jnp.ones((8, 64))}, "b_proj": {"kernel": jnp.ones((64, 8))}}
  msgs = []
  out = quant.quantize_int8_params(small, log=msgs.append)
  assert isinstance(out["b_proj"]["kernel"], quant.Int8Weight)
  assert out["a_proj"]["kernel"] is small["a_proj"]["kernel"]
  assert "kept 1 kernel" in msgs[0] and "a_proj/kernel" in msgs[0]
  assert quant.int8_report(out)["kept_in_float"] == ["a_proj/kernel"]
  with pytest.raises(UserError, match="2-D float"):
    quant.quantize_int8(jnp.ones((4, 4), jnp.int32))


def test_load_with_quantize_int8(tmp_path):
  """jaxslm.load(path, quantize="int8"): the loaded tree holds int8 kernels and
  samples; an unknown value names the valid ones."""
  import jaxslm
  from jaxslm.checkpoint import save_params
  from jaxslm.tokenizers import get_tokenizer
  tok = get_tokenizer("gpt2")
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(2))
  out = save_params(str(tmp_path / "m"), params, {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  loaded = jaxslm.load(out, quantize="int8")
  assert loaded.meta["quantize"] == "int8"
  # weight-only: the projections, multiplied as x @ q; the embedding and head stay float
  assert quant.int8_report(loaded.params)["int8_matrices"] == 7 * cfg.n_layers
  kernels = [w for w in jax.tree_util.tree_leaves(loaded.params, is_leaf=quant.is_quantized)
             if isinstance(w, quant.Int8Weight)]
  assert {w.matmul for w in kernels} == {"dequantize"}
  assert not quant.is_quantized(loaded.params["embed"])
  assert isinstance(jaxslm.sample(loaded, "Ava has", max_new_tokens=3), str)
  dynamic = jaxslm.load(out, quantize="int8-dynamic")
  # the projections, the embedding and the untied head, activations quantized per token
  assert quant.int8_report(dynamic.params)["int8_matrices"] == 7 * cfg.n_layers + 2
  assert dynamic.params["embed"].matmul == "int8_dot"
  assert isinstance(jaxslm.sample(dynamic, "Ava has", max_new_tokens=3), str)
  with pytest.raises(UserError, match="valid values: none, int8"):
    jaxslm.load(out, quantize="fp8")


def test_lm_eval_backend_quantize_int8():
  """The lm-eval backend's quantize= model arg: int8 kernels, scores and generations."""
  pytest.importorskip("lm_eval", reason="lm-eval is an optional extra")
  from lm_eval.api.instance import Instance
  from jaxslm.evaluation.lm_eval_backend import JaxslmLM
  from jaxslm.tokenizers import get_tokenizer
  tok = get_tokenizer("gpt2")
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32")
  params = init_params(cfg, jax.random.PRNGKey(3))
  lm = JaxslmLM(model=(cfg, params, tok), quantize="int8-dynamic", batch_size=2)
  assert quant.int8_report(lm.params)["int8_matrices"] == 7 * cfg.n_layers + 2
  ref = JaxslmLM(model=(cfg, params, tok), batch_size=2)
  pair = [Instance("loglikelihood", {}, ("Ava has 3", " pens"), 0)]
  (got, _), (want, _) = lm.loglikelihood(pair)[0], ref.loglikelihood(pair)[0]
  assert got != want and abs(got - want) < 0.05 * abs(want)
  gen = [Instance("generate_until", {}, ("Ava has", {"until": ["\n"], "max_gen_toks": 4,
                                                    "do_sample": False}), 0)]
  assert isinstance(lm.generate_until(gen)[0], str)
  with pytest.raises(UserError, match="valid values: none, int8"):
    JaxslmLM(model=(cfg, params, tok), quantize="int4")


def test_eval_launcher_quantize_int8(tmp_path):
  """launch/eval.py --quantize int8 (in process): evaluates the int8 tree."""
  import json
  from jaxslm.checkpoint import save_params
  from jaxslm.evaluation import cli
  from jaxslm.tokenizers import get_tokenizer
  tok = get_tokenizer("gpt2")
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32")
  ckpt = save_params(str(tmp_path / "m"), init_params(cfg, jax.random.PRNGKey(2)),
                     {"model": cfg.to_dict(), "tokenizer": tok.spec()})
  data = tmp_path / "gsm8k"
  data.mkdir()
  (data / "test.jsonl").write_text("".join(
      json.dumps({"question": f"Tom has {i} apples and buys 2. How many?",
                  "answer": f"{i}+2=<<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"}) + "\n"
      for i in range(2)))
  args = cli.parse(["--checkpoint", ckpt, "--data", str(data), "--max-new-tokens", "4",
                    "--batch-size", "2", "--out", str(tmp_path / "eval"), "--quantize", "int8",
                    "--no-perplexity", "--no-rouge", "--similarity-model", "off"])
  summary = cli.run(args, log=lambda s: None)
  (s,) = summary.values()
  assert s["accuracy"]["n"] == 2
  with pytest.raises(SystemExit):   # argparse's choices refuse it before any work
    cli.parse(["--checkpoint", ckpt, "--quantize", "int4"])
