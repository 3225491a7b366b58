"""jaxslm.workdir_lock: one run per workdir, stale locks taken over, real races."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from jaxslm.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLocked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
          "JAX_PLATFORMS": "cpu"}


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOCK_FILE), "w") as f:
    json.dump(holder, f)


def test_lock_holds_pid_host_time_and_is_released(tmp_path):
  with WorkdirLock(str(tmp_path / "run")) as lock:
    holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    assert holder["started"].endswith("+00:00") and lock.held
  assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_second_run_fails_in_one_line_naming_the_holder(tmp_path):
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(WorkdirLocked) as e:
      WorkdirLock(str(tmp_path)).acquire()
  msg = str(e.value)
  assert "\n" not in msg and f"pid {os.getpid()} on {socket.gethostname()}" in msg
  assert "--workdir" in msg
  WorkdirLock(str(tmp_path)).acquire()   # free again once the first left


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
  _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname(), started="earlier",
              started_unix=time.time() - 60, token="old")
  lines = []
  lock = WorkdirLock(str(tmp_path), log=lines.append)
  lock.acquire()
  assert lock.held and len(lines) == 1 and "stale" in lines[0] and "earlier" in lines[0]
  assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()


def test_reused_pid_is_stale_but_a_live_holder_is_not(tmp_path):
  # Our own pid, but the lock predates this process: the pid was reused.
  _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), started="long ago",
              started_unix=0.0, token="old")
  with WorkdirLock(str(tmp_path), log=lambda _: None) as lock:
    assert lock.held
  _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), started="now",
              started_unix=time.time(), token="live")
  with pytest.raises(WorkdirLocked, match="in use by another run"):
    WorkdirLock(str(tmp_path)).acquire()


def test_lock_from_another_host_is_never_taken_over(tmp_path):
  _write_lock(tmp_path, pid=_dead_pid(), host="elsewhere.example", started="t", token="x")
  with pytest.raises(WorkdirLocked, match=f"delete {tmp_path / LOCK_FILE}"):
    WorkdirLock(str(tmp_path)).acquire()


def test_a_file_that_is_not_a_lock_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr("jaxslm.workdir_lock._READ_PATIENCE_S", 0.1)
  (tmp_path / LOCK_FILE).write_text("hello")
  with pytest.raises(WorkdirLocked, match="not a jaxslm lock"):
    WorkdirLock(str(tmp_path)).acquire()


# The racers import the lock module without jaxslm/__init__ (which imports JAX),
# so that they start within a fraction of a second of each other.
_BARE_IMPORT = textwrap.dedent(f"""
    import sys, types
    pkg = types.ModuleType("jaxslm")
    pkg.__path__ = [{os.path.join(ROOT, "jaxslm")!r}]
    sys.modules["jaxslm"] = pkg
""")

_RACER = _BARE_IMPORT + textwrap.dedent("""
    import sys, time
    from jaxslm.workdir_lock import WorkdirLock, WorkdirLocked
    workdir, start = sys.argv[1], float(sys.argv[2])
    while time.time() < start:
      pass
    try:
      with WorkdirLock(workdir, log=lambda line: None):
        print("held", flush=True)
        time.sleep(1.0)
    except WorkdirLocked as e:
      print("locked", flush=True)
      sys.exit(2)
""")


def _race(workdir, n=3):
  start = time.time() + 1.5   # every racer has imported the lock module by then
  procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(workdir), repr(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
           for _ in range(n)]
  outs = [p.communicate(timeout=60) for p in procs]
  return [(p.returncode, o.strip(), err) for p, (o, err) in zip(procs, outs)]


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_racing_processes_exactly_one_wins(tmp_path, stale):
  if stale:
    _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname(), started="t",
                started_unix=time.time() - 60, token="old")
  results = _race(tmp_path)
  assert sorted(r[1] for r in results) == ["held", "locked", "locked"], results
  assert sorted(r[0] for r in results) == [0, 2, 2]
  assert not (tmp_path / LOCK_FILE).exists()   # the winner released it


def test_lock_left_by_a_killed_run_is_taken_over_and_atexit_releases(tmp_path):
  code = _BARE_IMPORT + ("import sys, time\nfrom jaxslm.workdir_lock import WorkdirLock\n"
          "WorkdirLock(sys.argv[1]).acquire()\nprint('held', flush=True)\n"
          "time.sleep(float(sys.argv[2]))\n")
  # Left without release: atexit removes the lock.
  subprocess.run([sys.executable, "-c", code, str(tmp_path), "0"], check=True, env=_env(),
                 capture_output=True)
  assert not (tmp_path / LOCK_FILE).exists()
  # Killed: the lock stays, and the next run takes it over.
  p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), "60"], stdout=subprocess.PIPE,
                       text=True, env=_env())
  assert p.stdout.readline().strip() == "held"
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == p.pid
  lines = []
  with WorkdirLock(str(tmp_path), log=lines.append):
    assert any(f"pid {p.pid}" in line for line in lines)
