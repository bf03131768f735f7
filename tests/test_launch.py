"""launch/: the Cloud TPU CLI (dry-run commands, errors) and the Colab notebook (valid, and every
command it issues refers to real configs and fields). Needs neither gcloud nor a TPU; runs no training.
"""

import ast
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from launch import colab_smoke  # noqa: E402
from launch import tpu  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

Z = ["--name=cdm-pod", "--zone=us-central2-b"]
SSH = "gcloud compute tpus tpu-vm ssh cdm-pod --zone=us-central2-b"


@pytest.fixture(autouse=True)
def _no_subprocess(monkeypatch):
  """A dry run must not call gcloud (or anything else)."""
  def boom(*a, **k):
    raise AssertionError(f"dry run ran a command: {a}")
  monkeypatch.setattr(tpu.subprocess, "run", boom)


def dry(capsys, *argv):
  assert tpu.main([*argv, "--dry_run"]) == 0
  return capsys.readouterr().out.splitlines()


def usage_error(capsys, *argv):
  with pytest.raises(SystemExit) as e:
    tpu.main([*argv, "--dry_run"])
  assert e.value.code == 2
  return capsys.readouterr().err


def remote_script(line):
  """The --command=... script of a gcloud ssh line, and its words as the worker's shell sees them."""
  (script,) = [t[len("--command="):] for t in shlex.split(line) if t.startswith("--command=")]
  return script


def bash_syntax_ok(script):
  if shutil.which("bash") is None:
    pytest.skip("no bash")
  return subprocess.Popen(["bash", "-n", "-c", script]).wait() == 0


# ------------------------------------------------------------------ create / delete / status

def test_create_exact(capsys):
  assert dry(capsys, "create", *Z, "--accelerator_type=v4-32", "--spot") == [
      "gcloud compute tpus tpu-vm create cdm-pod --zone=us-central2-b --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base --spot"]
  assert dry(capsys, "create", *Z, "--project=my-proj", "--accelerator_type=v5litepod-64",
             "--preemptible", "--version=v2-alpha-tpuv5-lite", "--gcloud_flag=--network=net 1") == [
      "gcloud compute tpus tpu-vm create cdm-pod --zone=us-central2-b --project=my-proj "
      "--accelerator-type=v5litepod-64 --version=v2-alpha-tpuv5-lite --preemptible "
      "'--network=net 1'"]


def test_create_queued_spot_exact(capsys):
  assert dry(capsys, "create", *Z, "--accelerator_type=v6e-16", "--spot", "--queued",
             "--valid_until_duration=6h") == [
      "gcloud compute tpus queued-resources create cdm-pod --zone=us-central2-b --node-id=cdm-pod "
      "--accelerator-type=v6e-16 --runtime-version=v2-alpha-tpuv6e --spot "
      "--valid-until-duration=6h",
      "gcloud compute tpus queued-resources describe cdm-pod --zone=us-central2-b "
      "'--format=value(state.state)'"]
  err = usage_error(capsys, "create", *Z, "--accelerator_type=v4-8", "--preemptible", "--queued")
  assert "--spot" in err


def test_delete_and_status_exact(capsys):
  assert dry(capsys, "delete", *Z) == [
      "gcloud compute tpus tpu-vm delete cdm-pod --zone=us-central2-b"]
  assert dry(capsys, "delete", *Z, "--queued", "--queued_resource_id=qr1", "--yes") == [
      "gcloud compute tpus queued-resources delete qr1 --zone=us-central2-b --force --quiet"]
  assert dry(capsys, "status", *Z, "--project=p") == [
      "gcloud compute tpus tpu-vm describe cdm-pod --zone=us-central2-b --project=p"]


@pytest.mark.parametrize("acc,chips,devices,hosts", [
    ("v4-8", 4, 4, 1), ("v4-64", 32, 32, 8), ("v3-32", 16, 32, 4), ("v5p-128", 64, 64, 16),
    ("v5litepod-8", 8, 8, 1), ("v5litepod-64", 64, 64, 16), ("v6e-4", 4, 4, 1)])
def test_parse_accelerator(acc, chips, devices, hosts):
  s = tpu.parse_accelerator(acc)
  assert (s.chips, s.devices, s.hosts) == (chips, devices, hosts)


def test_missing_name_is_an_error(capsys):
  with pytest.raises(SystemExit) as e:
    tpu.main(["create", "--zone=us-central2-b", "--accelerator_type=v4-8", "--dry_run"])
  assert e.value.code == 2
  assert "--name" in capsys.readouterr().err


@pytest.mark.parametrize("acc,words", [
    ("v4-12", "multiples of 8"), ("v5e-64", "v5litepod-64"), ("tpu-8", "expected <family>-<size>"),
    ("v7x-8", "unknown TPU family"), ("v5litepod-3", "count chips"), ("v4", "<family>-<size>")])
def test_bad_accelerator_is_an_error(capsys, acc, words):
  err = usage_error(capsys, "create", *Z, f"--accelerator_type={acc}")
  assert words in err


@pytest.mark.parametrize("argv,words", [
    (["create", "--name=Bad_Name", "--zone=z", "--accelerator_type=v4-8"], "bad TPU name"),
    (["train", *Z, "--stage=base32", "--workdir=gs://b/w", "--worker=first"], "bad --worker"),
    (["create", *Z, "--accelerator_type=v4-8", "--config.train.batch_size=8"], "no --config"),
    (["train", *Z, "--stage=base32", "--workdir=gs://b/w", "--bogus=1"], "unrecognized"),
])
def test_bad_flags_are_errors(capsys, argv, words):
  assert words in usage_error(capsys, *argv)


# ------------------------------------------------------------------ setup

def test_setup_git(capsys):
  (line,) = dry(capsys, "setup", *Z, "--repo=https://example.com/cdm.git", "--ref=v0.1")
  assert line.startswith(SSH + " --worker=all '--command=set -e; ")
  script = remote_script(line)
  assert "git clone --quiet https://example.com/cdm.git cdm" in script
  assert "git -C cdm checkout --quiet --force v0.1" in script
  assert "python3 -m pip install --quiet -e . 'jax[tpu]'" in script
  assert bash_syntax_ok(script)
  assert "--repo" in usage_error(capsys, "setup", *Z)


def test_setup_wheel(capsys):
  lines = dry(capsys, "setup", *Z, "--wheel=dist/cdm-0.1.0-py3-none-any.whl", "--worker=0-3")
  assert lines[:3] == [
      SSH + " --worker=0-3 '--command=mkdir -p cdm'",
      "gcloud compute tpus tpu-vm scp dist/cdm-0.1.0-py3-none-any.whl cdm-pod:cdm/ "
      "--zone=us-central2-b --worker=0-3",
      f"gcloud compute tpus tpu-vm scp --recurse {shlex.quote(str(REPO / 'configs'))} cdm-pod:cdm/ "
      "--zone=us-central2-b --worker=0-3"]
  script = remote_script(lines[3])
  assert "./cdm-0.1.0-py3-none-any.whl 'jax[tpu]'" in script and bash_syntax_ok(script)


# ------------------------------------------------------------------ train / logs / stop

TRAIN_SCRIPT = (
    'D="$HOME/cdm_logs"; mkdir -p "$D"; if [ -f "$D/base32.pid" ] && kill -0 "$(cat "$D/base32.pid")"'
    ' 2>/dev/null; then echo "cdm job base32 is already running on $(hostname) (pid $(cat '
    '"$D/base32.pid")): stop it first" >&2; exit 1; fi; cd cdm || exit 1; nohup env '
    "PYTHONUNBUFFERED=1 python3 -m cdm.main --config=configs/base32.py --workdir=gs://bkt/cdm/base32 "
    "--config.data.data_dir=gs://bkt/tfds --config.train.batch_size=1024 "
    "'--config.model.channel_mult=(1,2,3,4)' '--config.stage_name=base 32 (test)' "
    '>> "$D/base32.log" 2>&1 < /dev/null & echo $! > "$D/base32.pid"; echo "started cdm job base32 '
    '(pid $(cat "$D/base32.pid")) on $(hostname); log: $D/base32.log"')
OVERRIDES = ["--config.train.batch_size=1024", "--config.model.channel_mult=(1,2,3,4)",
             "--config.stage_name=base 32 (test)"]


def test_train_exact(capsys):
  assert tpu.main(["train", *Z, "--stage=base32", "--workdir=gs://bkt/cdm/base32",
                   "--data_dir=gs://bkt/tfds", "--accelerator_type=v4-64", *OVERRIDES,
                   "--dry_run"]) == 0
  out = capsys.readouterr()
  lines = out.out.splitlines()
  assert lines == [shlex.join(SSH.split() + ["--worker=all", "--command=" + TRAIN_SCRIPT])]
  assert "v4-64: 8 workers x 4 devices; global batch 1024 = 32 per device." in out.err
  script = remote_script(lines[0])
  assert bash_syntax_ok(script)
  words = shlex.split(script)  # what the worker's shell passes to python: overrides intact
  for o in OVERRIDES:
    assert o in words


def test_train_same_line_for_every_mode_and_alias(capsys):
  assert tpu.main(["run", *Z, "--config=configs/cascades/mnist.py", "--mode=sample",
                   "--workdir=gs://b/c", "--worker=0", "--dry_run", "--",
                   "--config.stages.sr.aug_level=250"]) == 0
  (line,) = capsys.readouterr().out.splitlines()
  assert line.startswith(SSH + " --worker=0 ")
  script = remote_script(line)
  assert ("python3 -m cdm.main --config=configs/cascades/mnist.py --workdir=gs://b/c --mode=sample "
          "--config.stages.sr.aug_level=250 >> \"$D/mnist_sample.log\"") in script


@pytest.mark.parametrize("extra,words", [
    (["--stage=base32", "--config.train.bach_size=8"], "bach_size"),
    (["--stage=base32", "--config.train.batch_size=many"], "batch_size"),
    (["--stage=base32", "--config.train.batch_size=0"], "batch_size must be positive"),
    (["--stage=base33"], "does not exist"),
    (["--stage=base32", "--mode=eval"], "cascade config"),
    (["--config=configs/cascades/mnist.py"], "stage config"),
    (["--stage=base32", "--accelerator_type=v4-48"], "does not split over the 24 devices"),
])
def test_train_rejects_bad_configs(capsys, extra, words):
  assert words in usage_error(capsys, "train", *Z, "--workdir=gs://b/w", *extra)


def test_train_needs_gcs_workdir(capsys):
  assert "not on GCS" in usage_error(capsys, "train", *Z, "--stage=base32", "--workdir=/tmp/w")
  (line,) = dry(capsys, "train", *Z, "--stage=mnist/base16", "--workdir=/tmp/w",
                "--allow_local_workdir", "--job=mb16", "--env=XLA_FLAGS=--xla_dump_to=/tmp/d x")
  assert ("nohup env PYTHONUNBUFFERED=1 'XLA_FLAGS=--xla_dump_to=/tmp/d x' python3 -m cdm.main "
          "--config=configs/mnist/base16.py --workdir=/tmp/w >> \"$D/mb16.log\"") in remote_script(line)


def test_logs_and_stop_exact(capsys):
  assert dry(capsys, "logs", *Z, "--job=base32") == [
      SSH + " --worker=0 '--command=D=\"$HOME/cdm_logs\"; tail -n 100 -F \"$D/base32.log\"'"]
  (line,) = dry(capsys, "stop", *Z, "--job=base32")
  assert line.startswith(SSH + " --worker=all ")
  script = remote_script(line)
  assert 'kill -TERM "$pid"' in script and bash_syntax_ok(script)


def test_remote_train_logs_stop_scripts_run(capsys, tmp_path):
  """The worker-side scripts, run here with a fake python3: start, refuse a 2nd start, stop."""
  if shutil.which("bash") is None:
    pytest.skip("no bash")
  bindir, home = tmp_path / "bin", tmp_path / "home"
  (home / "cdm").mkdir(parents=True)
  bindir.mkdir()
  fake = bindir / "python3"
  fake.write_text(textwrap.dedent("""\
      #!/bin/bash
      trap 'echo "got TERM"; exit 0' TERM
      for a in "$@"; do echo "ARG<$a>"; done
      echo ready
      while true; do sleep 0.05; done
      """))
  fake.chmod(0o755)
  env = {**os.environ, "HOME": str(home), "PATH": f"{bindir}:{os.environ['PATH']}"}
  sh = lambda s: subprocess.Popen(["bash", "-c", s], cwd=home, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True).communicate()[0]
  (line,) = dry(capsys, "train", *Z, "--stage=base32", "--workdir=gs://b/w", *OVERRIDES)
  train = remote_script(line)
  stop = remote_script(dry(capsys, "stop", *Z, "--job=base32", "--wait_s=10")[0])
  logs = remote_script(dry(capsys, "logs", *Z, "--job=base32", "--no_follow")[0])
  log = home / "cdm_logs" / "base32.log"
  assert "started cdm job base32" in sh(train)
  for _ in range(200):
    if log.exists() and "ready" in log.read_text():
      break
    subprocess.Popen(["sleep", "0.02"]).wait()
  assert "already running" in sh(train)
  out = sh(logs)
  for o in OVERRIDES:
    assert f"ARG<{o}>" in out
  assert "ARG<--config=configs/base32.py>" in out
  out = sh(stop)
  assert "sent SIGTERM" in out and "exited" in out
  assert "got TERM" in log.read_text()
  assert not (home / "cdm_logs" / "base32.pid").exists()


def test_resume_dry_run(capsys):
  lines = dry(capsys, "resume", *Z, "--queued", "--spot", "--accelerator_type=v4-64",
              "--repo=https://example.com/cdm.git", "--stage=sr64_256", "--workdir=gs://b/sr")
  assert [l.split(" --")[0] for l in lines] == [
      "gcloud compute tpus queued-resources describe cdm-pod",  # state; the rest runs if not ACTIVE
      "gcloud compute tpus queued-resources delete cdm-pod",
      "gcloud compute tpus queued-resources create cdm-pod",
      "gcloud compute tpus queued-resources describe cdm-pod",  # wait for ACTIVE
      SSH.split(" --")[0], SSH.split(" --")[0]]
  assert "--quiet" in lines[1] and "--spot" in lines[2]
  args = tpu.parse_args(["resume", *Z, "--accelerator_type=v4-64", "--repo=r", "--stage=base32",
                         "--workdir=gs://b/w"])
  assert [c.argv[4] for c in tpu.resume_commands(args, "READY")] == ["ssh"]  # healthy: train only


# ------------------------------------------------------------------ cdm.main flags

def test_cdm_main_flags_match_cdm_main():
  """launch/tpu.py mirrors cdm/main.py's flags; keep them in sync."""
  tree = ast.parse((REPO / "cdm" / "main.py").read_text())
  names, modes = [], None
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith("DEFINE"):
      names.append(node.args[0].value)
      if node.func.attr == "DEFINE_enum" and node.args[0].value == "mode":
        modes = tuple(ast.literal_eval(node.args[2]))
  assert sorted(names) == sorted(tpu.CDM_MAIN_FLAGS)
  assert modes == tpu.CDM_MODES


# ------------------------------------------------------------------ the Colab notebook

def test_notebook_is_valid_nbformat4():
  nb = colab_smoke.load_notebook()
  try:
    import nbformat  # pylint: disable=g-import-not-at-top
  except ImportError:
    nbformat = None
  if nbformat is not None:
    nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))
  assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
  assert isinstance(nb["metadata"], dict) and nb["metadata"]["kernelspec"]["language"] == "python"
  ids = set()
  for cell in nb["cells"]:
    assert cell["cell_type"] in ("code", "markdown")
    assert isinstance(cell["metadata"], dict)
    src = cell["source"]
    assert isinstance(src, str) or all(isinstance(s, str) for s in src)
    if nb["nbformat_minor"] >= 5:
      assert cell["id"] not in ids
      ids.add(cell["id"])
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None
  cells = colab_smoke.code_cells(nb)  # raises on a magic / shell escape
  assert len(cells) >= 6
  for i, src in enumerate(cells):
    compile(src, f"cell {i}", "exec")


def _cdm_commands(commands):
  out = []
  for c in commands:
    if c[1:3] == ["-m", "cdm.main"]:
      out.append(c[3:])
  return out


def _flag(args, name):
  (v,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
  return v


@pytest.mark.parametrize("backend,smoke", [("cpu", False), ("tpu", False), ("cpu", True)])
def test_notebook_commands_are_valid(backend, smoke):
  ns = colab_smoke.run_notebook(dry_run=True, backend=backend, smoke=smoke)
  jobs = _cdm_commands(ns["COMMANDS"])
  assert len(jobs) == 3, ns["COMMANDS"]
  base, sr, sample = jobs
  configs = []
  for args in jobs:
    config, fv = tpu.validate_cdm_argv(args, str(REPO))  # real files, fields and values
    configs.append(config)
  variant = ":tiny" if smoke else ""
  assert _flag(base, "config") == f"configs/mnist/base16.py{variant}"
  assert _flag(sr, "config") == f"configs/mnist/sr16_32.py{variant}"
  assert _flag(sample, "config") == f"configs/cascades/mnist.py{variant}"
  assert _flag(sample, "mode") == "sample"
  # The cascade samples the checkpoints the training cells wrote.
  assert _flag(sample, "config.stages.base.checkpoint") == _flag(base, "workdir")
  assert _flag(sample, "config.stages.sr.checkpoint") == _flag(sr, "workdir")
  cascade = configs[2]
  assert tuple(ns["SAMPLE_PNGS"]) == tuple(cascade.order)
  for name, png in ns["SAMPLE_PNGS"].items():
    assert png == os.path.join(str(REPO), _flag(sample, "workdir"), "samples", f"{name}.png")
  steps = configs[0].train.num_steps
  if smoke:
    assert steps <= 5
  elif backend == "tpu":
    assert steps >= 200
    for c in configs[:2]:  # a Colab TPU v2-8 has 8 devices
      assert c.train.batch_size % 8 == 0
    assert cascade.batch_size % 8 == 0
  else:
    assert 0 < steps < 200
  if backend == "tpu":
    installs = [c for c in ns["COMMANDS"] if "pip" in c]
    assert all("jax[tpu]" in c for c in installs)
