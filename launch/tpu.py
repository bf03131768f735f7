#!/usr/bin/env python3
r"""Cloud TPU VMs and pod slices for cdm, through ``gcloud``.

  python launch/tpu.py create --name=cdm-v4 --zone=us-central2-b --accelerator_type=v4-64 --spot
  python launch/tpu.py setup  --name=cdm-v4 --zone=us-central2-b --repo=https://github.com/ORG/cdm.git
  python launch/tpu.py train  --name=cdm-v4 --zone=us-central2-b --stage=base32 \
      --workdir=gs://BUCKET/cdm/base32 --data_dir=gs://BUCKET/tfds --config.train.batch_size=2048
  python launch/tpu.py logs   --name=cdm-v4 --zone=us-central2-b --job=base32
  python launch/tpu.py stop   --name=cdm-v4 --zone=us-central2-b --job=base32
  python launch/tpu.py exec   --name=cdm-v4 --zone=us-central2-b --cmd="ls /dev/accel*"
  python launch/tpu.py delete --name=cdm-v4 --zone=us-central2-b
  python launch/tpu.py resume ...   # after a preemption: recreate if needed, set up, train again

Every subcommand takes ``--dry_run``: it prints the exact gcloud commands, one per line (shell-quoted
with ``shlex.join``), and runs nothing. ``train`` runs the same ``python3 -m cdm.main ...`` command on
every worker, in the background (nohup), logging to ``~/cdm_logs/<job>.log`` on each worker; any
``--config.<field>=<value>`` argument is passed through to cdm and checked locally first against the
locked config (an unknown field or a bad value fails here, not after the slice has started).

Preemption: SIGTERM (``stop``, or the TPU's own maintenance/preemption notice) makes cdm save a
checkpoint and exit; running ``train`` again with the same ``--workdir`` resumes from the latest
checkpoint. A preempted Spot TPU is gone for good: ``resume`` deletes it, creates it again (with
``--queued``: as a queued resource, waiting until it is ACTIVE), sets it up and starts ``train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# TPU software versions for JAX (https://cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
# Families whose accelerator-type number counts TensorCores (2 per chip) vs chips.
_CORE_COUNTED = ("v2", "v3", "v4", "v5p")
_CHIP_COUNTED_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)

# Flags of ``python -m cdm.main`` (cdm/main.py); tests/test_launch.py checks they stay in sync.
CDM_MAIN_FLAGS = ("config", "workdir", "mode", "base_samples", "multihost")
CDM_MODES = ("train", "sample", "eval", "sweep")

REMOTE_LOG_DIR = '"$HOME/cdm_logs"'  # on every worker (expanded by its shell)
_JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_WORKER_RE = re.compile(r"^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$")


class LaunchError(Exception):
  """A bad flag or config, reported as a usage error."""


# ------------------------------------------------------------------ accelerators

@dataclasses.dataclass(frozen=True)
class SliceInfo:
  """What an accelerator type such as ``v4-64`` or ``v5litepod-16`` provides."""
  accelerator_type: str
  family: str
  count: int  # the number in the name: TensorCores for v2/v3/v4/v5p, chips for v5e/v6e
  chips: int
  devices: int  # JAX devices (v2/v3: one per core; later: one per chip)
  hosts: int  # TPU VM workers

  @property
  def devices_per_host(self) -> int:
    return self.devices // self.hosts


def parse_accelerator(value: str) -> SliceInfo:
  """Parses and checks a gcloud accelerator type (``v4-32``, ``v5litepod-64``, ``v6e-8``, ...)."""
  m = re.fullmatch(r"(v[0-9]+[a-z]*)-([0-9]+)", value or "")
  if not m:
    raise LaunchError(
        f"bad accelerator type {value!r}: expected <family>-<size> with family one of "
        f"{', '.join(RUNTIME_VERSIONS)} (e.g. v4-32, v5litepod-64, v5p-128, v6e-16).")
  family, count = m.group(1), int(m.group(2))
  if family == "v5e":
    raise LaunchError(f"bad accelerator type {value!r}: gcloud calls TPU v5e 'v5litepod' "
                      f"(use v5litepod-{count}).")
  if family not in RUNTIME_VERSIONS:
    raise LaunchError(f"bad accelerator type {value!r}: unknown TPU family {family!r} "
                      f"(expected one of {', '.join(RUNTIME_VERSIONS)}).")
  if family in _CORE_COUNTED:
    if count < 8 or count % 8:
      raise LaunchError(
          f"bad accelerator type {value!r}: {family} sizes count TensorCores and are multiples "
          f"of 8 ({family}-8, {family}-32, {family}-64, ...).")
    chips = count // 2
    devices = count if family in ("v2", "v3") else chips
    hosts = max(1, chips // 4)
  else:
    if count not in _CHIP_COUNTED_SIZES:
      raise LaunchError(
          f"bad accelerator type {value!r}: {family} sizes count chips and are one of "
          f"{', '.join(map(str, _CHIP_COUNTED_SIZES))}.")
    chips = devices = count
    hosts = 1 if count <= 8 else count // 4
  return SliceInfo(value, family, count, chips, devices, hosts)


def _accelerator_arg(value: str) -> SliceInfo:
  try:
    return parse_accelerator(value)
  except LaunchError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def _name_arg(value: str) -> str:
  if not _NAME_RE.match(value) or len(value) > 63:
    raise argparse.ArgumentTypeError(
        f"bad TPU name {value!r}: lowercase letters, digits and '-', starting with a letter "
        "(at most 63 characters).")
  return value


def _worker_arg(value: str) -> str:
  if not _WORKER_RE.match(value):
    raise argparse.ArgumentTypeError(
        f"bad --worker {value!r}: 'all', an index (0), a list (0,2) or a range (1-3).")
  return value


def _job_arg(value: str) -> str:
  if not _JOB_RE.match(value):
    raise argparse.ArgumentTypeError(
        f"bad job name {value!r}: letters, digits, '_', '.', '-' only.")
  return value


def _env_arg(value: str) -> str:
  if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", value):
    raise argparse.ArgumentTypeError(f"bad --env {value!r}: expected NAME=VALUE.")
  return value


# ------------------------------------------------------------------ cdm command lines

def _cdm_flag_values(argv: Sequence[str]):
  """absl FlagValues with the flags of cdm/main.py, parsing ``argv`` (argv[0] = program name)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "stage or cascade config", flag_values=fv,
                                  lock_config=True, sys_argv=list(argv))
  flags.DEFINE_string("workdir", None, "workdir", flag_values=fv)
  flags.DEFINE_enum("mode", "train", list(CDM_MODES), "mode", flag_values=fv)
  flags.DEFINE_string("base_samples", None, "npz", flag_values=fv)
  flags.DEFINE_enum("multihost", "auto", ["auto", "true", "false"], "multihost", flag_values=fv)
  return fv


def _local_config_arg(arg: str, repo_root: str) -> str:
  """``--config=configs/x.py[:variant]`` with the path made absolute (relative to the repo)."""
  value = arg.split("=", 1)[1]
  path, sep, variant = value.partition(":")
  if not os.path.isabs(path):
    path = os.path.join(repo_root, path)
  if not os.path.isfile(path):
    raise LaunchError(f"config file {value.partition(':')[0]!r} does not exist in {repo_root}.")
  return f"--config={path}{sep}{variant}"


def validate_cdm_argv(args: Sequence[str], repo_root: str = REPO_ROOT):
  """Checks the arguments of ``python -m cdm.main ARGS`` as cdm would parse them.

  Loads the config file (relative paths: from ``repo_root``) through ml_collections' config flag,
  applies every ``--config.<field>=<value>`` override to the locked config (unknown fields and
  values of the wrong type are errors), checks the mode against the kind of config (stage vs
  cascade) and runs cdm's own config validation. Returns ``(config, flag_values)``.
  """
  args = list(args)
  names = []
  for a in args:
    if not a.startswith("--"):
      raise LaunchError(f"cdm.main takes no positional arguments (got {a!r}).")
    name = a[2:].split("=", 1)[0]
    if "=" not in a:
      raise LaunchError(f"write cdm flags as --name=value (got {a!r}).")
    base = name.split(".", 1)[0]
    if base not in CDM_MAIN_FLAGS or (name != base and base != "config"):
      raise LaunchError(f"unknown cdm.main flag --{name} (flags: "
                        f"{', '.join('--' + f for f in CDM_MAIN_FLAGS)}, --config.<field>=...).")
    names.append(name)
  for required in ("config", "workdir"):
    if required not in names:
      raise LaunchError(f"cdm.main needs --{required}.")
  i = names.index("config")
  if any(n.startswith("config.") for n in names[:i]):
    raise LaunchError("--config.<field> overrides must come after --config=<file>.")
  args[i] = _local_config_arg(args[i], repo_root)
  if repo_root not in sys.path:
    sys.path.insert(0, repo_root)
  argv = ["cdm.main"] + args
  try:
    fv = _cdm_flag_values(argv)
    rest = fv(argv)
    config = fv.config
  except Exception as e:  # absl flag errors, locked-config KeyErrors, config import errors
    raise LaunchError(f"cdm would reject {shlex.join(list(args))}: {type(e).__name__}: {e}") from e
  if len(rest) > 1:
    raise LaunchError(f"unexpected arguments for cdm.main: {rest[1:]}")
  from cdm import config_base  # pylint: disable=g-import-not-at-top
  is_cascade = "stages" in config
  mode = fv.mode
  try:
    if mode == "train":
      if is_cascade:
        raise LaunchError("--mode=train takes a stage config (configs/<stage>.py), not a cascade.")
      config_base.validate(config)
    else:
      if not is_cascade:
        raise LaunchError(f"--mode={mode} takes a cascade config (configs/cascades/<name>.py).")
      missing = [n for n in config.order if n not in config.stages]
      if missing:
        raise LaunchError(f"cascade order names stages {missing} that it does not define.")
      for n in config.order:
        config_base.validate(config.stages[n].config)
  except ValueError as e:
    raise LaunchError(f"invalid config: {e}") from e
  return config, fv


# ------------------------------------------------------------------ gcloud commands

@dataclasses.dataclass
class Command:
  argv: list
  allow_fail: bool = False  # e.g. deleting a TPU that may already be gone
  wait_for: Optional[str] = None  # re-run until its stdout (stripped) equals this

  def __str__(self):
    return shlex.join(self.argv)


def _gcloud(args, resource: str, *words) -> list:
  cmd = ["gcloud", "compute", "tpus", resource, *words, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def _ssh(args, script: str, worker: Optional[str] = None) -> Command:
  cmd = _gcloud(args, "tpu-vm", "ssh", args.name)
  cmd += [f"--worker={worker or args.worker}", f"--command={script}"]
  return Command(cmd)


def _qr_id(args) -> str:
  return args.queued_resource_id or args.name


def create_commands(args) -> list:
  acc = args.accelerator_type
  version = args.version or RUNTIME_VERSIONS[acc.family]
  if args.queued:
    if args.preemptible:
      raise LaunchError("--queued takes --spot (queued resources have no --preemptible).")
    cmd = _gcloud(args, "queued-resources", "create", _qr_id(args))
    cmd += [f"--node-id={args.name}", f"--accelerator-type={acc.accelerator_type}",
            f"--runtime-version={version}"]
    if args.spot:
      cmd.append("--spot")
    if args.valid_until_duration:
      cmd.append(f"--valid-until-duration={args.valid_until_duration}")
    cmd += args.gcloud_flag
    wait = _gcloud(args, "queued-resources", "describe", _qr_id(args))
    wait.append("--format=value(state.state)")
    return [Command(cmd), Command(wait, wait_for="ACTIVE")] if args.wait else [Command(cmd)]
  if args.valid_until_duration:
    raise LaunchError("--valid_until_duration needs --queued.")
  cmd = _gcloud(args, "tpu-vm", "create", args.name)
  cmd += [f"--accelerator-type={acc.accelerator_type}", f"--version={version}"]
  if args.spot:
    cmd.append("--spot")
  if args.preemptible:
    cmd.append("--preemptible")
  cmd += args.gcloud_flag
  return [Command(cmd)]


def setup_commands(args) -> list:
  d = shlex.quote(args.remote_dir)
  pip = ["python3", "-m", "pip", "install", "--quiet"]
  extra = [args.jax_spec] if args.jax_spec else []
  if args.jax_find_links:
    extra += ["-f", args.jax_find_links]
  check = shlex.join(["python3", "-c", "import cdm, jax; print(jax.__version__)"])
  if args.wheel:
    wheel = os.path.basename(args.wheel)
    if not wheel.endswith(".whl"):
      raise LaunchError(f"--wheel={args.wheel!r} is not a .whl file (build one: pip wheel . -w dist).")
    cmds = [_ssh(args, f"mkdir -p {d}")]
    fetch = []
    if args.wheel.startswith("gs://"):
      fetch = [f"gcloud storage cp {shlex.quote(args.wheel)} ."]
    else:
      if not args.dry_run and not os.path.isfile(args.wheel):
        raise LaunchError(f"--wheel={args.wheel!r} does not exist.")
      scp = _gcloud(args, "tpu-vm", "scp", args.wheel, f"{args.name}:{args.remote_dir}/")
      cmds.append(Command(scp + [f"--worker={args.worker}"]))
    # The wheel holds the cdm package only: the stage configs travel beside it.
    configs = os.path.join(REPO_ROOT, "configs")
    scp = _gcloud(args, "tpu-vm", "scp", "--recurse", configs, f"{args.name}:{args.remote_dir}/")
    cmds.append(Command(scp + [f"--worker={args.worker}"]))
    script = "; ".join([
        "set -e", f"cd {d}", *fetch,
        shlex.join(pip + ["--upgrade", "pip"]),
        shlex.join(pip + ["--force-reinstall", "--no-deps", f"./{wheel}"]),
        shlex.join(pip + [f"./{wheel}"] + extra), check])
    cmds.append(_ssh(args, script))
    return cmds
  if not args.repo:
    raise LaunchError("setup needs --repo=<git URL> (or --wheel=<path or gs:// .whl>).")
  if args.ref:
    update = (f"git -C {d} fetch --quiet --tags origin; "
              f"git -C {d} checkout --quiet --force {shlex.quote(args.ref)}")
  else:
    update = f"git -C {d} pull --quiet --ff-only"
  script = "; ".join([
      "set -e",
      f"if [ ! -d {d}/.git ]; then git clone --quiet {shlex.quote(args.repo)} {d}; fi",
      update, f"cd {d}",
      shlex.join(pip + ["--upgrade", "pip"]),
      shlex.join(pip + ["-e", "."] + extra), check])
  return [_ssh(args, script)]


def _config_arg(args) -> str:
  if args.config:
    return args.config
  stage = args.stage[:-3] if args.stage.endswith(".py") else args.stage
  return f"configs/{stage}.py"


def job_name(args) -> str:
  if getattr(args, "job", None):
    return args.job
  base = os.path.basename(_config_arg(args).partition(":")[0])
  base = base[:-3] if base.endswith(".py") else base
  variant = _config_arg(args).partition(":")[2]
  name = base + (f"_{variant}" if variant else "")
  mode = getattr(args, "mode", "train")
  return name if mode == "train" else f"{name}_{mode}"


def cdm_args(args) -> list:
  """The arguments of ``python3 -m cdm.main`` for ``train`` (checked by validate_cdm_argv)."""
  out = [f"--config={_config_arg(args)}", f"--workdir={args.workdir}"]
  if args.mode != "train":
    out.append(f"--mode={args.mode}")
  if args.base_samples:
    out.append(f"--base_samples={args.base_samples}")
  if args.data_dir:
    if args.mode != "train":
      raise LaunchError("--data_dir sets data.data_dir of a stage config (--mode=train); for a "
                        "cascade override --config.stages.<stage>.config.data.data_dir.")
    out.append(f"--config.data.data_dir={args.data_dir}")
  return out + list(args.overrides)


def train_commands(args) -> list:
  if not args.workdir.startswith("gs://") and not args.allow_local_workdir:
    raise LaunchError(
        f"--workdir={args.workdir!r} is not on GCS: every worker of a pod slice must see the same "
        "checkpoints (and a preempted TPU VM loses its disk). Use gs://BUCKET/..., or pass "
        "--allow_local_workdir for a single-host experiment.")
  argv = cdm_args(args)
  if not args.skip_validation:
    try:
      config, _ = validate_cdm_argv(argv)
    except ImportError as e:
      print(f"warning: cannot check the cdm config locally ({e}); pass --skip_validation to "
            "silence this.", file=sys.stderr)
      config = None
    acc = getattr(args, "accelerator_type", None)
    if config is not None and acc is not None:
      batch = config.train.batch_size if args.mode == "train" else config.batch_size
      if batch % acc.devices:
        raise LaunchError(f"global batch {batch} does not split over the {acc.devices} devices "
                          f"of {acc.accelerator_type}.")
      print(f"{acc.accelerator_type}: {acc.hosts} workers x {acc.devices_per_host} devices; "
            f"global batch {batch} = {batch // acc.devices} per device.", file=sys.stderr)
  job = job_name(args)
  env = ["PYTHONUNBUFFERED=1"] + list(args.env)
  python = shlex.join(["nohup", "env", *env, "python3", "-m", "cdm.main", *argv])
  log, pid = f'"$D/{job}.log"', f'"$D/{job}.pid"'
  script = "; ".join([
      f'D={REMOTE_LOG_DIR}', 'mkdir -p "$D"',
      f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then echo "cdm job {job} is '
      f'already running on $(hostname) (pid $(cat {pid})): stop it first" >&2; exit 1; fi',
      f"cd {shlex.quote(args.remote_dir)} || exit 1",
      # "&" ends the background command itself: no ";" after it.
      f"{python} >> {log} 2>&1 < /dev/null & echo $! > {pid}",
      f'echo "started cdm job {job} (pid $(cat {pid})) on $(hostname); log: $D/{job}.log"'])
  return [_ssh(args, script)]


def logs_commands(args) -> list:
  n = int(args.lines)
  follow = "-F " if args.follow else ""
  if args.job:
    target = f'"$D/{args.job}.log"'
  else:  # the newest log
    target = '"$(ls -t "$D"/*.log | head -n 1)"'
  return [_ssh(args, f"D={REMOTE_LOG_DIR}; tail -n {n} {follow}{target}", worker=args.worker)]


def stop_commands(args) -> list:
  pattern = args.job or "*"
  sig = args.signal
  wait = int(args.wait_s)
  script = (
      f'D={REMOTE_LOG_DIR}; for P in "$D"/{pattern}.pid; do '
      f'[ -f "$P" ] || continue; pid=$(cat "$P"); job=$(basename "$P" .pid); '
      f'if ! kill -0 "$pid" 2>/dev/null; then echo "$job: not running on $(hostname)"; '
      f'rm -f "$P"; continue; fi; '
      f'kill -{sig} "$pid"; echo "$job: sent SIG{sig} to pid $pid on $(hostname)"; '
      f'for i in $(seq {5 * wait}); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done; '
      f'if kill -0 "$pid" 2>/dev/null; then echo "$job: still running after {wait}s"; '
      f'else echo "$job: exited"; rm -f "$P"; fi; done')
  return [_ssh(args, script)]


def exec_commands(args) -> list:
  """Any shell command on the workers, from the cdm checkout (data prep, checks, ...)."""
  return [_ssh(args, f"cd {shlex.quote(args.remote_dir)} || exit 1; {args.cmd}")]


def delete_commands(args, quiet: Optional[bool] = None) -> list:
  quiet = args.yes if quiet is None else quiet
  if args.queued:
    cmd = _gcloud(args, "queued-resources", "delete", _qr_id(args)) + ["--force"]
  else:
    cmd = _gcloud(args, "tpu-vm", "delete", args.name)
  if quiet:
    cmd.append("--quiet")
  return [Command(cmd)]


def status_commands(args) -> list:
  cmds = []
  if args.queued:
    cmds.append(Command(_gcloud(args, "queued-resources", "describe", _qr_id(args))))
  cmds.append(Command(_gcloud(args, "tpu-vm", "describe", args.name)))
  return cmds


def _state_command(args) -> Command:
  if args.queued:
    cmd = _gcloud(args, "queued-resources", "describe", _qr_id(args))
    return Command(cmd + ["--format=value(state.state)"], allow_fail=True)
  return Command(_gcloud(args, "tpu-vm", "describe", args.name) + ["--format=value(state)"],
                 allow_fail=True)


def resume_commands(args, state: Optional[str] = None) -> list:
  """Recreate-if-gone + setup + train. ``state`` is the TPU's state (None: unknown, dry run)."""
  healthy = "ACTIVE" if args.queued else "READY"
  args.wait = True
  if state == healthy:
    return train_commands(args)
  if state in ("WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING"):
    cmds = create_commands(args)[1:] if args.queued else []
    return cmds + setup_commands(args) + train_commands(args)
  gone = delete_commands(args, quiet=True)
  for c in gone:
    c.allow_fail = True
  return gone + create_commands(args) + setup_commands(args) + train_commands(args)


# ------------------------------------------------------------------ execution

def _run(commands, dry_run: bool, out=None) -> int:
  out = out or sys.stdout
  for c in commands:
    if dry_run:
      print(str(c), file=out)
      continue
    print(f"+ {c}", file=sys.stderr, flush=True)
    try:
      if c.wait_for is not None:
        while True:
          got = subprocess.run(c.argv, check=False, capture_output=True, text=True)
          state = got.stdout.strip()
          if state == c.wait_for:
            break
          if state in ("FAILED", "SUSPENDED"):
            raise LaunchError(f"queued resource is {state}: {got.stderr.strip()}")
          print(f"  state {state or got.stderr.strip()!r}; waiting for {c.wait_for} ...",
                file=sys.stderr, flush=True)
          time.sleep(30)
        continue
      rc = subprocess.run(c.argv, check=False).returncode
    except FileNotFoundError as e:
      raise LaunchError("gcloud is not installed or not on PATH (Google Cloud SDK); use "
                        "--dry_run to print the commands.") from e
    if rc and not c.allow_fail:
      print(f"command failed with exit status {rc}: {c}", file=sys.stderr)
      return rc
  return 0


def _query_state(args) -> Optional[str]:
  c = _state_command(args)
  print(f"+ {c}", file=sys.stderr, flush=True)
  try:
    got = subprocess.run(c.argv, check=False, capture_output=True, text=True)
  except FileNotFoundError as e:
    raise LaunchError("gcloud is not installed or not on PATH (Google Cloud SDK).") from e
  return got.stdout.strip() if got.returncode == 0 else "NOT_FOUND"


# ------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="launch/tpu.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

  common = argparse.ArgumentParser(add_help=False)
  g = common.add_argument_group("TPU")
  g.add_argument("--name", required=True, type=_name_arg, help="TPU VM / pod slice name.")
  g.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e).")
  g.add_argument("--project", default="", help="GCP project (default: gcloud's configured one).")
  g.add_argument("--queued", action="store_true",
                 help="The TPU is (to be) a queued resource (create/delete/status/resume).")
  g.add_argument("--queued_resource_id", default="", help="Queued resource id (default: --name).")
  g.add_argument("--dry_run", action="store_true",
                 help="Print the gcloud commands (one per line, shell-quoted) and run nothing.")

  worker = argparse.ArgumentParser(add_help=False)
  worker.add_argument("--worker", default="all", type=_worker_arg,
                      help="Workers to run on: all (default), 0, 0,2 or 1-3.")
  worker.add_argument("--remote_dir", default="cdm",
                      help="cdm checkout on each worker, relative to its home (default: cdm).")

  create = argparse.ArgumentParser(add_help=False)
  g = create.add_argument_group("create")
  g.add_argument("--accelerator_type", required=True, type=_accelerator_arg,
                 help="v4-32, v4-64, v5litepod-64, v5p-128, v6e-16, ...")
  g.add_argument("--version", default="",
                 help="TPU software version (default per family: " +
                 ", ".join(f"{k}: {v}" for k, v in RUNTIME_VERSIONS.items()) + ").")
  spot = g.add_mutually_exclusive_group()
  spot.add_argument("--spot", action="store_true", help="Spot capacity (preemptible, cheaper).")
  spot.add_argument("--preemptible", action="store_true", help="Legacy preemptible TPU.")
  g.add_argument("--valid_until_duration", default="",
                 help="--queued: give up on the request after this long (e.g. 6h).")
  g.add_argument("--no_wait", dest="wait", action="store_false",
                 help="--queued: do not wait for the queued resource to become ACTIVE.")
  g.add_argument("--gcloud_flag", action="append", default=[],
                 help="Extra flag for the create command, verbatim (e.g. --network=my-net); "
                 "repeatable.")

  setup = argparse.ArgumentParser(add_help=False)
  g = setup.add_argument_group("setup")
  g.add_argument("--repo", default="", help="git URL of cdm to clone on every worker.")
  g.add_argument("--ref", default="", help="Branch, tag or commit to check out (default: pull).")
  g.add_argument("--wheel", default="",
                 help="Install this cdm wheel (local path or gs://) instead of a git checkout; "
                 "the local configs/ folder is copied beside it.")
  g.add_argument("--jax_spec", default="jax[tpu]", help="JAX requirement for TPUs ('' = none).")
  g.add_argument("--jax_find_links", default="", help="Extra pip -f URL for libtpu, if needed.")

  job = argparse.ArgumentParser(add_help=False)
  g = job.add_argument_group("job (python -m cdm.main on every worker)")
  which = g.add_mutually_exclusive_group(required=True)
  which.add_argument("--stage", help="Stage name: configs/<stage>.py (base32, sr64_256, "
                     "mnist/base16, ...).")
  which.add_argument("--config", help="Config file path[:variant], relative to the repo "
                     "(e.g. configs/cascades/mnist.py).")
  g.add_argument("--workdir", required=True, help="gs://BUCKET/... (checkpoints, metrics, "
                 "samples); the same workdir resumes.")
  g.add_argument("--mode", default="train", choices=CDM_MODES, help="cdm.main --mode.")
  g.add_argument("--data_dir", default="", help="TFDS data_dir (gs://...) for a stage config.")
  g.add_argument("--base_samples", default="", help="cdm.main --base_samples (sample mode).")
  g.add_argument("--job", default=None, type=_job_arg,
                 help="Job name for the log/pid files (default: the config's name[_mode]).")
  g.add_argument("--env", action="append", default=[], type=_env_arg,
                 help="NAME=VALUE environment variable for cdm; repeatable.")
  g.add_argument("--allow_local_workdir", action="store_true",
                 help="Allow a non-gs:// workdir (single-host only).")
  g.add_argument("--skip_validation", action="store_true",
                 help="Do not check the config and overrides locally.")

  overrides_help = ("Any --config.<field>=<value> argument is passed to cdm.main (checked "
                    "locally against the locked config first).")
  sub.add_parser("create", parents=[common, create], help="Create a TPU VM / pod slice.")
  sub.add_parser("setup", parents=[common, worker, setup],
                 help="Install cdm (+ jax[tpu]) on every worker.")
  tr = sub.add_parser("train", aliases=["run"], parents=[common, worker, job],
                      help="Start a cdm job (train/sample/eval/sweep) on every worker.",
                      epilog=overrides_help)
  tr.add_argument("--accelerator_type", type=_accelerator_arg, default=None,
                  help="If given, check that the global batch splits over its devices.")
  lg = sub.add_parser("logs", parents=[common],
                      help="Stream a job's log from one worker (default 0).")
  lg.add_argument("--worker", default="0", type=_worker_arg)
  lg.add_argument("--job", default=None, type=_job_arg, help="Job name (default: newest log).")
  lg.add_argument("--lines", default=100, type=int)
  lg.add_argument("--no_follow", dest="follow", action="store_false")
  st = sub.add_parser("stop", parents=[common, worker],
                      help="Signal a job on every worker (SIGTERM: checkpoint and exit).")
  st.add_argument("--job", default=None, type=_job_arg, help="Job name (default: every job).")
  st.add_argument("--signal", default="TERM", choices=("TERM", "INT", "KILL"))
  st.add_argument("--wait_s", default=300, type=int,
                  help="Seconds to wait for the job to exit (its checkpoint saved).")
  ex = sub.add_parser("exec", parents=[common, worker],
                      help="Run a shell command on the workers, in the cdm checkout.")
  ex.add_argument("--cmd", required=True,
                  help="e.g. \"python3 -c 'import jax; print(jax.device_count())'\"")
  dl = sub.add_parser("delete", parents=[common], help="Delete the TPU (or queued resource).")
  dl.add_argument("--yes", action="store_true", help="Do not ask for confirmation (--quiet).")
  sub.add_parser("status", parents=[common], help="Describe the TPU (and queued resource).")
  sub.add_parser("resume", parents=[common, worker, create, setup, job],
                 help="After a preemption: recreate the TPU if it is gone, set it up, train "
                 "again (same workdir: resumes from the latest checkpoint).",
                 epilog=overrides_help)
  return p


def parse_args(argv: Optional[Sequence[str]] = None, parser=None):
  parser = parser or build_parser()
  args, extra = parser.parse_known_args(argv)
  overrides, bad = [], []
  for a in extra:
    if a == "--":
      continue
    (overrides if a.startswith("--config.") and "=" in a else bad).append(a)
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)} (cdm overrides are "
                 "--config.<field>=<value>)")
  if overrides and args.command not in ("train", "run", "resume"):
    parser.error(f"{args.command} takes no --config.<field> overrides: {' '.join(overrides)}")
  args.overrides = overrides
  if args.command == "run":
    args.command = "train"
  return args


def commands_for(args) -> list:
  """The gcloud commands a parsed command line runs (for --dry_run and for tests)."""
  return {
      "create": create_commands, "setup": setup_commands, "train": train_commands,
      "logs": logs_commands, "stop": stop_commands, "exec": exec_commands,
      "delete": delete_commands,
      "status": status_commands, "resume": resume_commands,
  }[args.command](args)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parse_args(argv, parser)
  try:
    if args.command == "resume" and not args.dry_run:
      state = _query_state(args)
      print(f"TPU state: {state}", file=sys.stderr)
      return _run(resume_commands(args, state), dry_run=False)
    if args.command == "resume":
      print(str(_state_command(args)))  # run first; delete/create/setup are skipped when healthy
    return _run(commands_for(args), args.dry_run)
  except LaunchError as e:
    parser.error(str(e))
  return 2


if __name__ == "__main__":
  sys.exit(main())
