"""Run untrusted Python (a completion and its tests) in a sandboxed subprocess; the code verifier's engine.

    result = run_tests(code, ["assert add(1, 2) == 3"], SandboxLimits(timeout_s=2))
    result.passed, result.total, result.timed_out, result.isolation

What contains the code, strongest first (`isolation()` says which apply on this machine, once, by probing):

- **Namespaces** (`unshare --net --mount --pid --fork --mount-proc`, util-linux; as root, or as a normal user
  with `--user --map-root-user` where unprivileged user namespaces are allowed): a network namespace with only a
  down loopback (no external address, no localhost), a pid namespace whose init is the trusted supervisor in
  `sandbox_boot.py` (the completion sees no host process, and everything it forked dies with it), a mount
  namespace where every mount is read-only and the working directory is a fresh tmpfs (size-capped, gone with
  the namespace; nothing written outside it lands anywhere).
- **An unprivileged uid** (as root): a fresh random uid per run, so RLIMIT_NPROC counts only this run's
  processes, hard limits cannot be raised again, and no root-owned process (the trainer) can be signalled.
- **Resource limits** set in the worker before the completion runs: CPU seconds, address space, processes,
  file size (which also caps stdout and stderr: they go to files, so a flood ends in a failed write, never
  in the trainer's memory; only `output_chars` are read back), open files, no core dumps.
- **Always**: `python -I -B` (no PYTHON* variables, user site or cwd on sys.path), a minimal environment (PATH,
  LANG, HOME: no inherited secrets), stdin from /dev/null, a new session whose whole process group is killed
  with SIGKILL at the wall-clock timeout (after the namespace's init: see `_stop`) and again after every
  run, a temporary host folder removed after.

Without namespaces (no `unshare`, or it is refused) the run is marked `degraded`: limits, uid and timeout still
apply, but network and filesystem writes are then only as restricted as the uid is, and a completion that
calls setsid() can outlive the process-group kill until its CPU limit; as root with Python installed under a
directory others cannot enter (/root), only the modules the supervisor preloads import. Set
`RECIPE_SANDBOX=none` to force that mode (for checking the fallback); `RECIPE_SANDBOX=require` makes a
degraded sandbox an error. Checked here (root, util-linux 2.38, Linux 6.18): the root mode and the degraded
mode; the user-namespace mode is implemented but was not exercised (no non-root Python here).
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

BOOT = Path(__file__).with_name("sandbox_boot.py")
SETUP_FAILED = 121  # sandbox_boot.SETUP_FAILED: the sandbox itself failed, the code never ran
Mode = Literal["root", "userns", "none"]
_NS_FLAGS = ["--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
_UID_RANGE = (200_000, 2_000_000_000)  # fresh uids: no user owns files or processes with them
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_RESULT_TAIL = 64 * 1024  # bytes of stdout's end searched for the result line


class SandboxError(RuntimeError):
    """The sandbox could not be built (a machine problem, never the completion's doing): scoring every
    completion 0 instead would silently turn the code reward off."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run. Defaults fit short test suites of toy functions."""

    timeout_s: float = 5.0  # wall clock, interpreter start included; then the process group is killed
    cpu_s: int | None = None  # RLIMIT_CPU; default ceil(timeout_s) + 1
    memory_mb: int = 512  # RLIMIT_AS: the interpreter needs ~30 MB
    nproc: int = 32  # RLIMIT_NPROC for the run's own uid: forks fail beyond it
    fsize_mb: float = 1.0  # RLIMIT_FSIZE: any file written, stdout and stderr included
    nofile: int = 64  # RLIMIT_NOFILE
    tmpfs_mb: int = 16  # size of the writable working directory (namespaced runs)
    output_chars: int = 2000  # stdout/stderr kept in the result

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "nproc", "fsize_mb", "nofile", "tmpfs_mb", "output_chars"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0 (got {getattr(self, name)})")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError(f"SandboxLimits.cpu_s must be > 0 (got {self.cpu_s})")

    def boot_limits(self) -> dict[str, float | int]:
        cpu = self.cpu_s if self.cpu_s is not None else int(-(-self.timeout_s // 1)) + 1
        return {"cpu_s": cpu, "memory_mb": self.memory_mb, "nproc": self.nproc,
                "fsize_mb": self.fsize_mb, "nofile": self.nofile}


@dataclass(frozen=True)
class Isolation:
    """What this machine allows: the mode and, for the record, why the stronger modes were not used."""

    mode: Mode
    notes: tuple[str, ...] = ()

    @property
    def degraded(self) -> bool:
        return self.mode == "none"

    @property
    def drops_uid(self) -> bool:
        return os.geteuid() == 0 and self.mode != "userns"


@dataclass(frozen=True)
class SandboxResult:
    """One run: tests passed of total (0 of n when the run died before reporting), and how it ended."""

    passed: int
    total: int
    timed_out: bool
    returncode: int | None
    error: str | None
    stdout: str
    stderr: str
    wall_s: float
    isolation: str
    notes: tuple[str, ...] = field(default=())


def _probe(cmd: list[str]) -> str | None:
    """None when `cmd` runs, else why not."""
    try:
        r = subprocess.run(cmd + ["true"], capture_output=True, timeout=10, env=_ENV)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if r.returncode == 0 else (r.stderr.decode(errors="replace").strip() or f"exit {r.returncode}")


@functools.cache
def isolation() -> Isolation:
    """Probe once which sandbox mode works here (see the module docstring)."""
    forced = os.environ.get("RECIPE_SANDBOX", "")
    if forced == "none":
        return Isolation("none", ("RECIPE_SANDBOX=none",))
    notes: list[str] = []
    unshare = shutil.which("unshare")
    if unshare is None:
        notes.append("no unshare binary (util-linux)")
    else:
        if os.geteuid() == 0:
            why = _probe([unshare, *_NS_FLAGS, "--"])
            if why is None:
                return Isolation("root")
            notes.append(f"unshare as root refused: {why}")
        why = _probe([unshare, "--user", "--map-root-user", *_NS_FLAGS, "--"])
        if why is None:
            return Isolation("userns", tuple(notes))
        notes.append(f"unshare --user refused: {why}")
    if forced == "require":
        raise RuntimeError("RECIPE_SANDBOX=require but no namespace sandbox works here: " + "; ".join(notes))
    return Isolation("none", tuple(notes))


def _command(iso: Isolation) -> list[str]:
    python = [sys.executable, "-I", "-B", str(BOOT)]
    if iso.mode == "root":
        return [shutil.which("unshare") or "unshare", *_NS_FLAGS, "--", *python]
    if iso.mode == "userns":
        return [shutil.which("unshare") or "unshare", "--user", "--map-root-user", *_NS_FLAGS, "--", *python]
    return python


def _feed_and_wait(proc: subprocess.Popen[bytes], payload: bytes, timeout: float) -> bool:
    """Send the job on stdin (the supervisor reads it all before any untrusted code runs), then wait for the
    exit or the timeout; True on timeout. A pidfd wakes us the moment the process exits: Popen.wait(timeout)
    polls with sleeps of up to 50 ms, which was a third of a sandbox run."""
    deadline = time.monotonic() + timeout
    assert proc.stdin is not None
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    remaining = max(0.0, deadline - time.monotonic())
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel or Python): poll
        try:
            proc.wait(timeout=remaining)
            return False
        except subprocess.TimeoutExpired:
            return True
    try:
        ready, _, _ = select.select([pidfd], [], [], remaining)
    finally:
        os.close(pidfd)
    return not ready


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill everything the run started and wait for it to be gone.

    Namespaced: SIGKILL to unshare's child, the namespace's init (the trusted supervisor, which never changes
    its process group); its death takes every process in the pid namespace with it, whatever session they
    moved to, and unshare exits only after that. Then, in every mode, SIGKILL to the whole process group."""
    for child in _children(proc.pid) if proc.poll() is None else []:
        try:
            os.kill(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _result_line(path: Path, nonce: str) -> dict[str, object] | None:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - _RESULT_TAIL))
        tail = f.read().decode("utf-8", errors="replace")
    for line in reversed(tail.splitlines()):
        if line.startswith(nonce + " "):
            try:
                parsed = json.loads(line[len(nonce) + 1:])
            except json.JSONDecodeError:
                return None
            return parsed if isinstance(parsed, dict) else None
    return None


def run_tests(code: str, tests: Sequence[str], limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code`, then each test snippet in its namespace, in the sandbox; never raises for what the code does."""
    iso = isolation()
    nonce = secrets.token_hex(16)
    uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) if iso.drops_uid else None
    with tempfile.TemporaryDirectory(prefix="recipe-sandbox-") as tmp:
        host = Path(tmp)
        workdir = str(host / "box")  # namespaced: a tmpfs is mounted on it, the host folder stays empty
        os.chmod(host, 0o711)
        os.mkdir(workdir, 0o700)
        job = {"nonce": nonce, "code": code, "tests": list(tests), "workdir": workdir,
               "lock_fs": iso.mode != "none", "tmpfs_mb": limits.tmpfs_mb, "uid": uid,
               "limits": limits.boot_limits()}
        out, err = host / "stdout", host / "stderr"
        timed_out = False
        start = time.monotonic()
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            proc = subprocess.Popen(_command(iso), stdin=subprocess.PIPE, stdout=fout, stderr=ferr, cwd=host,
                                    env={**_ENV, "HOME": workdir}, start_new_session=True, close_fds=True)
            try:
                timed_out = _feed_and_wait(proc, json.dumps(job).encode(), limits.timeout_s)
            finally:
                _stop(proc)  # stragglers too, when the run ended normally
        wall = time.monotonic() - start
        if proc.returncode == SETUP_FAILED and not timed_out:
            raise SandboxError(f"the {iso.mode} sandbox could not be set up:\n{_read(err, 4000)}")
        report = None if timed_out else _result_line(out, nonce)
        stdout, stderr = _read(out, limits.output_chars), _read(err, limits.output_chars)
    error: str | None
    if report is None:
        error = "timed out" if timed_out else f"no result (exit {proc.returncode})"
        passed, total = 0, len(tests)
    else:
        raw = report.get("passed")
        # the count is trusted only as far as it is plausible: an int within 0..len(tests)
        passed, total = (min(max(raw, 0), len(tests)) if isinstance(raw, int) else 0), len(tests)
        error = str(report["error"]) if report.get("error") is not None else None
    return SandboxResult(passed=passed, total=total, timed_out=timed_out, returncode=proc.returncode,
                         error=error, stdout=stdout, stderr=stderr, wall_s=round(wall, 3),
                         isolation=iso.mode, notes=iso.notes)
