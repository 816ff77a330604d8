"""The inside of the code sandbox: a trusted supervisor that locks the filesystem, then a worker that drops
privileges, applies resource limits and runs the untrusted completion and its tests.

Not imported by the trainer: `runtime.rewards.sandbox` runs it as `python -I -B sandbox_boot.py` (usually under
`unshare --net --mount --pid --fork --mount-proc`) with one JSON job on stdin:

    {"nonce", "code", "tests": [str], "workdir", "lock_fs": bool, "tmpfs_mb", "uid": int | null,
     "limits": {"cpu_s", "memory_mb", "nproc", "fsize_mb", "nofile"}}

Why two processes. Under `--pid --fork` this supervisor is pid 1 of a fresh pid namespace; when it exits the
kernel kills every process left in the namespace, and it never runs untrusted code, so the completion cannot
escape the parent's process-group kill by calling setsid() (a fork bomb's survivors die with pid 1).

Why the limits are set here and not in the parent's `preexec_fn`: preexec_fn is not safe in a threaded parent
(the RL loop and the batch pool are threads) and the namespace and mount setup must run before the limits
(it needs more memory and file descriptors than the worker gets). They are still set before any byte of the
completion runs (hard = soft, but for CPU: SIGXCPU at the soft limit, SIGKILL a second later), and then the
worker drops to an unprivileged uid, so it cannot raise them again (root could).

The filesystem the worker sees (`lock_filesystem`): every mount bind-remounted read-only in the private mount
namespace (per mount, never the shared superblock: the host's filesystems stay writable); the interpreter's own
paths made reachable for the unprivileged uid when they sit behind a directory only root may enter (pyenv in
/root), by covering that directory with an empty tmpfs and binding back only what the interpreter needs;
and a fresh tmpfs of `tmpfs_mb` on the working directory, the only writable place.

The result is one line on stdout, `<nonce> {"passed": k, "total": n, "error": ...}`, printed by the worker's
original process only (not by processes it forked). This is containment, not tamper-proof grading: code in the
same process could in principle find the nonce in memory; the toy world's policies are far from that.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import stat
import sys
import traceback
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_RELATIME = 16384, 1 << 21
SETUP_FAILED = 121  # the supervisor's exit status when it could not build the sandbox (never a worker's)
PR_SET_NO_NEW_PRIVS = 38
# statvfs flag -> mount flag: kept on a bind remount (the kernel refuses to clear locked flags, and clearing
# nosuid/nodev/noexec would loosen the mount).
_KEEP = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
         (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _bind_remount_ro(target: str) -> None:
    """Make one mount read-only in this mount namespace only: always MS_BIND|MS_REMOUNT, the per-mount flag.
    (A plain MS_REMOUNT|MS_RDONLY would change the shared superblock: the host's filesystem.)"""
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY
    st = os.statvfs(target)
    for st_flag, ms_flag in _KEEP:
        if st.f_flag & st_flag:
            flags |= ms_flag
    assert flags & MS_BIND and flags & MS_REMOUNT
    _mount(None, target, None, flags)


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4]
            for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                point = point.replace(esc, ch)
            points.append(point)
    return sorted(set(points), key=len)


def _blocked(path: str) -> str | None:
    """The shallowest directory on the way to `path` (itself included) that other users cannot traverse."""
    current = "/"
    for part in [""] + [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        st = os.stat(current)
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH:
            return current
    return None


def expose(roots: list[str]) -> list[str]:
    """Make the interpreter's own paths (`roots`) reachable by the unprivileged uid, and nothing beside them:
    a directory others cannot traverse on the way (e.g. /root, where pyenv installs Python) is covered by an
    empty read-only tmpfs into which only the needed entries are bind-mounted back. Returns the covered dirs."""
    covered: list[str] = []
    for _ in range(16):
        blocked: dict[str, set[str]] = {}
        for root in roots:
            b = _blocked(root)
            if b is not None:
                blocked.setdefault(b, set()).add(root)
        if not blocked:
            return covered
        top = min(blocked, key=len)
        names = {os.path.relpath(r, top).split("/")[0] for r in blocked[top]}
        names = set(os.listdir(top)) if "." in names else names
        fds = {n: os.open(os.path.join(top, n), os.O_PATH) for n in names}
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0711")
        for name, fd in fds.items():
            target = os.path.join(top, name)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(target)
            else:
                open(target, "w").close()
            _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            os.close(fd)
            _bind_remount_ro(target)
        _bind_remount_ro(top)
        covered.append(top)
    raise OSError(f"could not expose {roots}: still blocked after 16 levels")


def interpreter_roots() -> list[str]:
    """Where this interpreter reads its modules from: prefixes and sys.path directories."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]
    return sorted({os.path.realpath(p) for p in paths if p and os.path.exists(p)})


def lock_filesystem(workdir: str, tmpfs_mb: int, uid: int | None) -> None:
    """Every mount read-only (any that cannot be is an error: a writable mount is a hole); the interpreter and
    `workdir` reachable by `uid`; a fresh size-capped tmpfs on `workdir` (an empty folder the parent made):
    the only writable place, which vanishes with the namespace."""
    failed = []
    for point in _mount_points():
        try:
            _bind_remount_ro(point)
        except OSError as e:
            failed.append(f"{point} ({e.strerror})")
    if failed:
        raise OSError(f"could not make these mounts read-only: {', '.join(failed)}")
    if uid is not None:
        expose(interpreter_roots() + [workdir])
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_mb}m,mode=0700")
    if uid is not None:
        os.chown(workdir, uid, uid)


def _set_limits(limits: dict[str, Any]) -> None:
    mib = 1024 * 1024
    for name, soft, hard in (
        ("RLIMIT_CPU", limits["cpu_s"], limits["cpu_s"] + 1),
        ("RLIMIT_AS", limits["memory_mb"] * mib, limits["memory_mb"] * mib),
        ("RLIMIT_NPROC", limits["nproc"], limits["nproc"]),
        ("RLIMIT_FSIZE", int(limits["fsize_mb"] * mib), int(limits["fsize_mb"] * mib)),
        ("RLIMIT_NOFILE", limits["nofile"], limits["nofile"]),
        ("RLIMIT_CORE", 0, 0),
    ):
        resource.setrlimit(getattr(resource, name), (soft, hard))


def _drop_privileges(uid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binaries (su, sudo) regain privileges


def _run_tests(code: str, tests: list[str], nonce: str) -> None:
    """Run the completion, then each test in its namespace; report from this process only."""
    me = os.getpid()
    passed, error = 0, None
    namespace: dict[str, Any] = {"__name__": "__solution__"}
    try:
        exec(compile(code, "<completion>", "exec"), namespace)
        for i, test in enumerate(tests):
            try:
                exec(compile(test, f"<test {i}>", "exec"), namespace)
                passed += 1
            except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt in a test are failures too
                error = error or f"test {i}: {type(e).__name__}: {e}"[:500]
    except BaseException as e:  # noqa: BLE001
        error = f"completion: {type(e).__name__}: {e}"[:500]
        traceback.print_exc()
    if os.getpid() != me:  # a process the completion forked: only the original reports
        os._exit(1)
    try:
        sys.stdout.write("\n" + nonce + " " + json.dumps({"passed": passed, "total": len(tests), "error": error}) + "\n")
        sys.stdout.flush()
    finally:
        os._exit(0)


def worker(job: dict[str, Any], ready: int) -> None:
    """Confine this process, tell the supervisor through `ready` that it is confined, then run the code."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(job["workdir"])
    _set_limits(job["limits"])
    _drop_privileges(job["uid"])
    code, tests, nonce = job.pop("code"), job.pop("tests"), job.pop("nonce")
    job.clear()
    os.write(ready, b"1")
    os.close(ready)
    _run_tests(code, tests, nonce)


# Imported before the uid drop, so they work even where the rest of the standard library is unreadable
# (the degraded mode's caveat), and so common solutions start faster.
PRELOAD = ("bisect", "collections", "dataclasses", "fractions", "functools", "heapq", "itertools", "math",
           "random", "re", "string", "typing")


def main() -> None:
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]  # no runtime/rewards/*.py imports
    try:
        for name in PRELOAD:
            __import__(name)
        job = json.load(sys.stdin)
        if job["lock_fs"]:
            lock_filesystem(job["workdir"], job["tmpfs_mb"], job["uid"])
        elif job["uid"] is not None:
            os.chown(job["workdir"], job["uid"], job["uid"])  # no namespaces: the parent's folder itself
        sys.stdout.flush()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
    except BaseException:  # noqa: BLE001 - report, and tell the parent it was the sandbox, not the code
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    if pid == 0:
        try:
            os.close(ready_r)
            worker(job, ready_w)
        except BaseException:  # noqa: BLE001 - confining failed (the code never ran): say why
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(1)
    os.close(ready_w)
    _, status = os.waitpid(pid, 0)
    if os.read(ready_r, 1) != b"1":  # the worker died before it was confined: the sandbox failed, not the code
        os._exit(SETUP_FAILED)
    # the worker's status, folded so that it can never read as SETUP_FAILED
    os._exit((0 if os.WEXITSTATUS(status) == 0 else 1) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
