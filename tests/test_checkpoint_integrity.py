"""Damaged checkpoints are found, named in one line, and stepped around.

A tiny model is saved with `Checkpointer` at steps 300, 400 and 500; each test
damages step 500 of a copy the way disks, copies and killed processes do, and
checks that `verify_step` names the damage, `newest_intact_step` falls back to
400, `jaxslm.load` fails in one line naming both steps, and a resume restores
step 400 exactly after moving 500 aside.
"""

import glob
import os
import random
import re
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxslm
from jaxslm import integrity
from jaxslm.checkpoint import (Checkpointer, DamagedCheckpoint, UncheckedCheckpoint, abstract_like,
                               read_step_params, save_params)
from jaxslm.data.synthetic import iter_documents
from jaxslm.errors import UserError
from jaxslm.models import ModelConfig
from jaxslm.models.summary import param_shapes
from jaxslm.tokenizers import train_sentencepiece

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (300, 400, 500)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
  """A workdir with steps 300, 400, 500 and the values each holds."""
  tok = train_sentencepiece(list(iter_documents(0, 300)), vocab_size=400)
  cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dtype="float32")
  rng = np.random.default_rng(0)   # random weights of the right shapes (no init compile)
  base = jax.tree.map(lambda a: jax.numpy.asarray(rng.normal(0, 0.02, a.shape).astype(a.dtype)),
                      param_shapes(cfg))
  workdir = tmp_path_factory.mktemp("run")
  ckpt = Checkpointer(str(workdir / "checkpoints"), keep=3)
  saved = {}
  for step in STEPS:
    params = jax.tree.map(lambda x: x + step / 1000, base)
    opt_state = optax.adamw(1e-3).init(params)
    opt_state = jax.tree.map(lambda x: x + 1 if x.dtype == np.float32 else x, opt_state)
    ckpt.save(step, params, opt_state, {"step": step, "model": cfg.to_dict(),
                                        "tokenizer": tok.spec()})
    saved[step] = (params, opt_state)
  ckpt.wait()
  ckpt.close()
  return workdir, saved


@pytest.fixture
def run(template, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(template[0], workdir)
  return str(workdir), template[1]


def _step(workdir, step):
  return os.path.join(workdir, "checkpoints", str(step))


def _largest_array_file(step_dir, item="params"):
  files = glob.glob(os.path.join(step_dir, item, "ocdbt.process_0", "d", "*"))
  return max(files, key=os.path.getsize)


def _flip(path, n=64, seed=0, start=0):
  data = bytearray(open(path, "rb").read())
  for i in random.Random(seed).sample(range(start, len(data)), min(n, len(data) - start)):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _same(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) and np.asarray(x).dtype == np.asarray(y).dtype
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) and \
      jax.tree.structure(a) == jax.tree.structure(b)


def _flipped_bytes(d):
  _flip(_largest_array_file(d))


def _half(d):
  f = _largest_array_file(d)
  os.truncate(f, os.path.getsize(f) // 2)


def _zero(d):
  os.truncate(_largest_array_file(d), 0)


def _manifest(d):
  os.remove(os.path.join(d, "params", "manifest.ocdbt"))


def _other_steps_params(d):
  """params/ of step 400 in step 500: readable, plausible, and wrong."""
  shutil.rmtree(os.path.join(d, "params"))
  shutil.copytree(os.path.join(os.path.dirname(d), "400", "params"), os.path.join(d, "params"))


def _meta_value(d):
  path = os.path.join(d, "meta", "metadata")
  text = open(path).read().replace('"step": 500', '"step": 600')
  open(path, "w").write(text)


def _step_metadata(d):
  path = os.path.join(d, "_CHECKPOINT_METADATA")
  text = open(path).read().replace("init_timestamp_nsecs", "hnit_timestamp_nsecs")
  open(path, "w").write(text)


DAMAGE = {
    "flipped_bytes": (_flipped_bytes, "params cannot be read|does not match"),
    "half_file": (_half, "params cannot be read"),
    "zero_byte_file": (_zero, "params cannot be read"),
    "missing_manifest": (_manifest, "params cannot be read"),
    "missing_params": (lambda d: shutil.rmtree(os.path.join(d, "params")), "params item is missing"),
    "missing_opt_state": (lambda d: shutil.rmtree(os.path.join(d, "opt_state")),
                          "opt_state item is missing"),
    "missing_meta": (lambda d: shutil.rmtree(os.path.join(d, "meta")), "meta item is missing"),
    "missing_commit_marker": (lambda d: os.remove(os.path.join(d, "commit_success.txt")),
                              "commit marker"),
    "another_steps_arrays": (_other_steps_params, "does not match its checksum"),
    "edited_meta": (_meta_value, "meta .* does not match its checksum"),
    "step_metadata": (_step_metadata, "Orbax step metadata .* cannot be read"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_named_and_load_names_the_newest_intact_step(run, kind):
  workdir, saved = run
  damage, pattern = DAMAGE[kind]
  damage(_step(workdir, 500))
  problem = integrity.verify_step(_step(workdir, 500))
  assert problem is not None and re.search(pattern, problem), problem
  step, damaged = integrity.newest_intact_step(os.path.join(workdir, "checkpoints"))
  assert step == 400 and [s for s, _ in damaged] == [500]
  for path in (workdir, _step(workdir, 500)):
    with pytest.raises(DamagedCheckpoint) as e:
      jaxslm.load(path)
    msg = str(e.value)
    assert "\n" not in msg and "step 500" in msg and problem.split(" (")[0] in msg
    assert f'jaxslm.load("{_step(workdir, 400)}")' in msg


def test_resume_falls_back_to_the_newest_intact_step_and_moves_damage_aside(run):
  workdir, saved = run
  _half(_step(workdir, 500))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  lines = []
  step, params, opt_state, meta = integrity.restore_newest_intact(
      ckpt, abstract_like(saved[400][0]), abstract_like(saved[400][1]), log=lines.append)
  assert step == 400 and meta["step"] == 400 and "checksums" not in meta
  assert _same(params, saved[400][0]) and _same(opt_state, saved[400][1])
  assert len(lines) == 1 and "step 500 is damaged" in lines[0] and "damaged/500-" in lines[0]
  moved = glob.glob(os.path.join(workdir, "checkpoints", "damaged", "500-*"))
  assert len(moved) == 1 and os.path.isdir(os.path.join(moved[0], "params"))
  assert ckpt.all_steps() == [300, 400] and ckpt.latest_step() == 400
  assert _same(jaxslm.load(workdir).params, saved[400][0])
  # The run goes on: the next save lands beside the intact steps.
  ckpt.save(410, params, opt_state, {"step": 410})
  ckpt.wait()
  assert integrity.verify_step(_step(workdir, 410)) is None


def test_a_step_orbax_cannot_open_is_named_and_set_aside_on_resume(run):
  workdir, saved = run
  _step_metadata(_step(workdir, 500))
  with pytest.raises(DamagedCheckpoint, match="step 500 .* Orbax cannot open") as e:
    Checkpointer(os.path.join(workdir, "checkpoints"))
  assert "\n" not in str(e.value)
  lines = []
  ckpt = integrity.open_checkpointer(os.path.join(workdir, "checkpoints"), set_aside=True,
                                     log=lines.append)
  assert ckpt.all_steps() == [300, 400] and len(lines) == 1 and "damaged/500-" in lines[0]
  step, params, _, _ = integrity.restore_newest_intact(
      ckpt, abstract_like(saved[400][0]), abstract_like(saved[400][1]), log=lines.append)
  assert step == 400 and _same(params, saved[400][0]) and len(lines) == 1


def test_a_restore_that_fails_for_another_reason_moves_nothing(run):
  workdir, saved = run
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  wrong = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape + (2,), x.dtype), saved[500][0])
  with pytest.raises(Exception):
    integrity.restore_newest_intact(ckpt, wrong, abstract_like(saved[500][1]), log=print)
  assert ckpt.all_steps() == list(STEPS)
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "damaged"))


def test_every_step_damaged_is_one_error_and_nothing_is_deleted(run):
  workdir, saved = run
  for step in STEPS:
    os.remove(os.path.join(_step(workdir, step), "commit_success.txt"))
  with pytest.raises(DamagedCheckpoint, match="No earlier step .* is intact"):
    jaxslm.load(workdir)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  with pytest.raises(DamagedCheckpoint, match="No intact checkpoint.*500, 400, 300"):
    integrity.restore_newest_intact(ckpt, abstract_like(saved[500][0]),
                                    abstract_like(saved[500][1]), log=lambda _: None)
  assert len(os.listdir(os.path.join(workdir, "checkpoints", "damaged"))) == 3


def test_checksums_catch_flips_that_decode_to_other_numbers(template, tmp_path):
  """An uncompressed export: flipped bytes decode to other weights, which only
  the checksums can tell."""
  _, saved = template
  meta = jaxslm.load(_step(str(template[0]), 500)).meta
  out = save_params(str(tmp_path / "export"), jax.device_get(saved[500][0]), meta,
                    host_in_place=True)
  _flip(_largest_array_file(out), n=64, seed=1, start=64)
  # Orbax alone reads it without complaint, and gets other numbers.
  raw = ocp.StandardCheckpointer().restore(os.path.join(out, "params"))
  assert not _same(raw, jax.device_get(saved[500][0]))
  assert "does not match its checksum" in integrity.verify_step(out)
  with pytest.raises(DamagedCheckpoint, match="does not match its checksum") as e:
    jaxslm.load(out)
  assert "\n" not in str(e.value)


def test_params_cast_after_verification(run):
  workdir, saved = run
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jax.numpy.bfloat16), saved[500][0])
  got = read_step_params(_step(workdir, 500), target)
  want = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), saved[500][0])
  assert _same(got, want)


def test_checkpoints_without_checksums_load_with_a_note(template, tmp_path):
  _, saved = template
  meta = dict(jaxslm.load(_step(str(template[0]), 500)).meta)
  old = tmp_path / "old" / "checkpoints"   # as Checkpointer saved it before checksums
  manager = ocp.CheckpointManager(str(old), item_names=("params", "opt_state", "meta"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(7, args=ocp.args.Composite(params=ocp.args.StandardSave(saved[500][0]),
                                           opt_state=ocp.args.StandardSave(saved[500][1]),
                                           meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loaded = jaxslm.load(str(tmp_path / "old"))
  notes = [w for w in caught if issubclass(w.category, UncheckedCheckpoint)]
  assert len(notes) == 1 and "without checksums" in str(notes[0].message)
  assert "\n" not in str(notes[0].message)
  assert _same(loaded.params, saved[500][0])
  assert integrity.verify_step(str(old / "7")) is None and not integrity.has_checksums(str(old / "7"))


def test_launcher_prints_one_line_and_exits_2(run):
  workdir, _ = run
  _half(_step(workdir, 500))
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "sample.py"),
                         "--checkpoint", workdir, "--prompt", "Ava"], capture_output=True,
                        text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: Checkpoint step 500"), lines
  assert f'jaxslm.load("{_step(workdir, 400)}")' in lines[0]


def test_digest_is_xxh3_of_the_c_order_bytes_whatever_the_layout():
  import xxhash
  from jaxslm import checksums
  rng = np.random.default_rng(1)
  base = rng.normal(size=(6, 5)).astype(np.float32)
  for a in (base, base.T, base[::2, 1:], np.float32(3.5), base.astype(jax.numpy.bfloat16),
            np.arange(7, dtype=np.int8), jax.numpy.asarray(base)):
    want = xxhash.xxh3_64_hexdigest(np.asarray(a).tobytes(order="C"))   # the reference
    assert checksums.digest(checksums.host_value(a)) == want


def test_check_tree_names_each_kind_of_difference():
  from jaxslm import checksums
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
  rec = checksums.record({"params": tree}, {})["params"]
  assert checksums.check_tree("params", rec, tree) == (None, 0)
  changed = {**tree, "w": tree["w"].copy()}
  changed["w"][1, 2] += 1
  assert checksums.check_tree("params", rec, changed)[0] == "params/w does not match its checksum"
  assert "is float64[3], saved as float32[3]" in checksums.check_tree(
      "params", rec, {**tree, "b": tree["b"].astype(np.float64)})[0]
  assert checksums.check_tree("params", rec, {"w": tree["w"]})[0] == "params/b is missing"
  assert "params/x is not in the checksum record" in checksums.check_tree(
      "params", rec, {**tree, "x": np.zeros(1)})[0]
  unhashed = {**rec, "b": {**rec["b"], checksums.ALGORITHM: None}}   # sharded across processes
  assert checksums.check_tree("params", unhashed, tree) == (None, 1)


# Bounded fuzzing: any file of step 500 gets flipped bytes or is cut short;
# loading (jaxslm.load) and restoring (a resume) give exactly the saved
# tensors or a UserError, never anything else.
_FILES = None


def _step_files(step_dir):
  return sorted(os.path.relpath(f, step_dir) for f in glob.glob(os.path.join(step_dir, "**"),
                                                                recursive=True)
                if os.path.isfile(f))


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_damaged_files_load_identical_or_raise_user_error(template, tmp_path_factory, data):
  workdir = str(tmp_path_factory.mktemp("fuzz") / "run")
  os.makedirs(os.path.join(workdir, "checkpoints"))
  shutil.copytree(os.path.join(template[0], "checkpoints", "500"), _step(workdir, 500))
  step_dir = _step(workdir, 500)
  name = data.draw(st.sampled_from(_step_files(step_dir)), label="file")
  path = os.path.join(step_dir, name)
  size = os.path.getsize(path)
  if data.draw(st.booleans(), label="truncate") or size == 0:
    os.truncate(path, data.draw(st.integers(0, max(size - 1, 0)), label="new size"))
  else:
    offsets = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=64), label="offsets")
    masks = data.draw(st.lists(st.integers(1, 255), min_size=len(offsets), max_size=len(offsets)),
                      label="xor masks")
    buf = bytearray(open(path, "rb").read())
    for i, m in zip(offsets, masks):
      buf[i] ^= m
    open(path, "wb").write(bytes(buf))
  params, opt_state = template[1][500]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UncheckedCheckpoint)
    try:
      loaded = jaxslm.load(workdir)
      assert _same(loaded.params, params), name
    except UserError:
      pass
    try:   # the resume path: params and optimizer state
      ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
      try:
        got_params, got_opt, _ = ckpt.restore(500, abstract_like(params), abstract_like(opt_state))
      finally:
        ckpt.close()
      assert _same(got_params, params) and _same(got_opt, opt_state), name
    except UserError:
      pass


def test_pretrain_resume_sets_a_damaged_step_aside_and_continues(tmp_path, capsys):
  from jaxslm.config import load_config
  from jaxslm.train.pretrain import run as pretrain

  def config(steps):   # test_pretrain's tiny run (so a test session compiles its step once)
    c = load_config(os.path.join(ROOT, "configs", "tiny.py"))
    c.data.synthetic_documents = 1200
    c.tokenizer.train_documents = 600
    c.train.update(dict(steps=steps, decay_steps=8, warmup_steps=2, batch_size=8, seq_len=32,
                        eval_every=4, eval_batches=1, checkpoint_every=2, log_every=1,
                        sample_prompts=()))
    return c

  workdir = str(tmp_path / "run")
  pretrain(config(4), workdir)
  _half(_step(workdir, 4))
  capsys.readouterr()
  out = pretrain(config(6), workdir, resume=True)
  assert out["start_step"] == 2 and out["step"] == 6
  log = capsys.readouterr()
  warned = [line for line in (log.out + log.err).splitlines() if "step 4 is damaged" in line]
  assert len(warned) == 1 and "damaged/4-" in warned[0]
  assert integrity.newest_intact_step(os.path.join(workdir, "checkpoints"))[0] == 6
