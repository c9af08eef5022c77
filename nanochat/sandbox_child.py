"""The child side of the sandbox in nanochat/execution.py: the code that runs inside each fresh
interpreter, around the model-written program.

The parent starts `python -I -B -X utf8 -c BOOTSTRAP ROOT CONFIG` in a new temporary directory; the
bootstrap puts ROOT on sys.path, imports this module (from its bytecode cache), takes ROOT off
sys.path again and calls `_child_main(CONFIG)`, which
- confines the process (`_confine`): joins the pids cgroup, dies with its parent, becomes a
  subreaper, sets the rlimits (and RLIMIT_NPROC), no_new_privs, Landlock (`_landlock`), drops
  every capability as root, and installs the audit-hook guard (`_install_guard`); when any of it
  fails the program does not run;
- reports the layers in place, runs program.py as a clean `__main__`, and reports how it ended
  (status and a one-line error), as JSON lines on the report pipe the parent reads;
- kills and reaps every process the program started (`_reap_descendants`) and leaves by os._exit.
Confining is ordinary, tested Python rather than a string handed to `-c`.

This module imports only the standard library, nothing of nanochat (execution.py included), so that
each child starts fast; the parent imports from here the little both sides use (PROGRAM, `_signal`,
`_descendants`). What the sandbox does and does not isolate is described in nanochat/execution.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import resource
import signal
import sys
import time
import traceback
import types
from pathlib import Path

PROGRAM = "program.py"  # the file, in the temporary directory, that holds the code
_CLEANUP_S = 1.0  # seconds the child spends killing and reaping what the program started


def _child_main(config_json: str) -> None:
    config = json.loads(config_json)
    leader, report_fd = os.getpid(), config["report_fd"]

    def report(**fields) -> None:
        with contextlib.suppress(OSError):
            os.write(report_fd, (json.dumps(fields) + "\n").encode())

    try:
        layers, guard_on = _confine(config)
    except Exception as e:  # confinement is complete or the program does not run
        report(status="error", error=f"sandbox setup failed: {type(e).__name__}: {e}")
        os._exit(3)
    report(isolation=layers)
    status, error = "passed", ""
    module = types.ModuleType("__main__")  # a clean __main__ for the program, not this module
    module.__file__ = os.path.abspath(PROGRAM)
    sys.modules["__main__"] = module
    sys.argv = [PROGRAM]  # as if run as `python program.py`; the config is no business of the program
    try:
        source = Path(PROGRAM).read_text(encoding="utf-8")
        exec(compile(source, PROGRAM, "exec"), module.__dict__)
    except BaseException as e:  # SystemExit and KeyboardInterrupt are outcomes here too
        if os.getpid() != leader:  # a forked copy ran off its end: only the leader speaks for the program
            os._exit(1)
        status = ("failed" if isinstance(e, AssertionError) else "memory" if isinstance(e, MemoryError)
                  else "error")
        error = _one_line(e)
        with contextlib.suppress(BaseException):  # from the program's frames on, not this one
            traceback.print_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None)
    if os.getpid() != leader:
        os._exit(0)
    if status == "memory":
        module.__dict__.clear()  # give back what the program held, so that reporting can allocate
    report(status=status, error=error)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    guard_on[0] = False  # the cleanup below kills, which the guard refuses to the program
    _reap_descendants()
    os._exit(0)


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."


def _reap_descendants() -> None:
    """Kill and reap every process the program started. This process is a subreaper, so orphans of
    its descendants (even ones that left the session) are re-parented to it: reaped here, they do
    not linger as zombies under an init that never reaps."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:  # never had a child: nothing to clean up
        return
    deadline = time.monotonic() + _CLEANUP_S
    while time.monotonic() < deadline:
        for pid in _descendants(os.getpid()):
            _signal(pid)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return
        time.sleep(0.005)


# ---- processes, found through /proc (the parent uses these too)


def _signal(pid: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process in /proc; empty where there is no /proc."""
    table = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()  # the command name may hold spaces
                except (OSError, IndexError):
                    continue
                table[int(name)] = (int(fields[1]), fields[0].decode())
    return table


def _descendants(root: int) -> list[int]:
    """Every live descendant of root, found through /proc."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, state) in _process_table().items():
        if state != "Z":
            children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


# prctl options and Landlock constants (linux/prctl.h, linux/landlock.h); the Landlock system
# calls have the same numbers on every architecture
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 1, 24, 38, 36
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_WRITE_FILE, _LANDLOCK_TRUNCATE = 1 << 1, 1 << 14
# the rights that change the file system (not READ_FILE, READ_DIR, EXECUTE: imports read anywhere),
# each with the ABI that introduced it: WRITE_FILE, REMOVE_DIR ... MAKE_SYM, REFER, TRUNCATE
_LANDLOCK_FS_WRITES = [(1 << b, 1) for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12)] + [(1 << 13, 2), (1 << 14, 3)]
_LANDLOCK_NET_TCP = 0b11  # BIND_TCP | CONNECT_TCP, ABI 4
_LANDLOCK_SCOPES = 0b11  # ABSTRACT_UNIX_SOCKET | SIGNAL, ABI 6


def _confine(config: dict) -> tuple[list[str], list[bool]]:
    """Put this process in its sandbox; return the layers in place and the guard's on switch."""
    linux = sys.platform.startswith("linux")  # prctl, Landlock, capabilities and /proc are Linux's
    libc = ctypes.CDLL(None, use_errno=True)
    layers = []
    if config["cgroup"]:  # first, while writing outside the sandbox is still allowed
        Path(config["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
        layers.append("pids-cgroup")
    if linux:
        _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the parent...
        if os.getppid() != config["parent"]:  # ...even if it died before the line above
            os._exit(5)
        _prctl(libc, _PR_SET_CHILD_SUBREAPER, 1)
    cpu = math.ceil(config["timeout"]) + 1  # the parent's wall clock comes first; this is a backstop
    for limit, value in ((resource.RLIMIT_AS, config["memory_mb"] << 20), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, config["max_file_mb"] << 20), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value + 1 if limit == resource.RLIMIT_CPU else value))
    layers.append("rlimits")
    if linux and os.geteuid() != 0:  # RLIMIT_NPROC counts all the user's tasks: allow ours on top
        nproc = _tasks_of_user(os.getuid()) + config["max_processes"] - 1
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        layers.append("nproc")
    if linux:
        _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)  # Landlock needs it; exec of setuid files gains nothing
        layers += _landlock(libc, config["workdir"])
        if os.geteuid() == 0:
            _drop_capabilities(libc)
            layers.append("no-capabilities")
    guard_on = [False]
    if config["guard"]:
        guard_on[0] = True
        _install_guard(config["workdir"], guard_on)
        layers.append("guard")
    return layers, guard_on


def _prctl(libc, option: int, value: int) -> None:
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _syscall(libc, number: int, *args) -> int:
    result = libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syscall {number}: {os.strerror(err)}")
    return result


def _tasks_of_user(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{name}/task"))
    return count


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # packed in linux/landlock.h
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock(libc, workdir: str) -> list[str]:
    """Let this process (and all it starts) change files only beneath workdir; [] where the kernel
    has no Landlock."""
    try:
        abi = _syscall(libc, _SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_long(1))
    except OSError:
        return []
    fs = sum(bit for bit, since in _LANDLOCK_FS_WRITES if abi >= since)
    attr = _RulesetAttr(fs, _LANDLOCK_NET_TCP if abi >= 4 else 0, _LANDLOCK_SCOPES if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # an older kernel refuses fields it does not know
    ruleset = _syscall(libc, _SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_long(0))
    try:
        null_rights = _LANDLOCK_WRITE_FILE | (_LANDLOCK_TRUNCATE if abi >= 3 else 0)
        for path, allowed in ((workdir, fs), ("/dev/null", null_rights)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(allowed, fd)
                _syscall(libc, _SYS_LANDLOCK_ADD_RULE, ctypes.c_long(ruleset), ctypes.c_long(1),
                         ctypes.byref(rule), ctypes.c_long(0))  # 1: LANDLOCK_RULE_PATH_BENEATH
            finally:
                os.close(fd)
        _syscall(libc, _SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_long(ruleset), ctypes.c_long(0))
    finally:
        os.close(ruleset)
    return ["landlock-fs"] + ["landlock-tcp"] * (abi >= 4) + ["landlock-scope"] * (abi >= 6)


def _drop_capabilities(libc) -> None:
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):  # the bounding set first, so that no later exec gets any back
        _prctl(libc, _PR_CAPBSET_DROP, cap)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable, two words each: all empty
    if libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


# the guard's tables: events that start or signal processes, open connections or load native code
_REFUSED_EVENTS = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                             "subprocess.Popen", "os.kill", "os.killpg", "resource.setrlimit"})
_REFUSED_PREFIXES = ("socket.", "ctypes.")
# events that change the file system -> for each path they change: (argument index of the path,
# argument index of the directory fd it is relative to, or None)
_PATH_EVENTS = {
    "os.mkdir": ((0, 2),), "os.rmdir": ((0, 1),), "os.remove": ((0, 1),), "os.chmod": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
    "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),), "os.chflags": ((0, None),),
    "os.setxattr": ((0, None),), "os.removexattr": ((0, None),), "shutil.rmtree": ((0, 1),),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# functions that change the system but raise no audit event
_UNAUDITED = ("setsid", "setpgid", "setpgrp", "mkfifo", "mknod")


def _install_guard(workdir: str, on: list[bool]) -> None:
    root = os.path.realpath(workdir)

    def inside(path, dir_fd) -> bool:
        try:
            if isinstance(path, int):  # an open descriptor: check what it refers to
                target = os.readlink(f"/proc/self/fd/{path}")
                if not target.startswith("/"):  # a pipe, socket or anonymous inode, not a file
                    return True
            else:
                base = os.getcwd() if dir_fd in (None, -1) else os.readlink(f"/proc/self/fd/{dir_fd}")
                target = os.path.join(base, os.fsdecode(path))
            # both the entry itself and what it points to must be inside
            for p in (os.path.realpath(target),
                      os.path.join(os.path.realpath(os.path.dirname(target)), os.path.basename(target))):
                if p != root and not p.startswith(root + os.sep):
                    return False
            return True
        except (OSError, TypeError, ValueError):
            return False

    def hook(event: str, args: tuple) -> None:
        if not on[0]:
            return
        if event in _REFUSED_EVENTS or event.startswith(_REFUSED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writes = flags & _WRITE_FLAGS if isinstance(flags, int) else any(c in (mode or "") for c in "wax+")
            if writes and not isinstance(path, int) and not inside(path, None):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        for path_at, fd_at in _PATH_EVENTS.get(event, ()):
            dir_fd = args[fd_at] if fd_at is not None else None
            if not inside(args[path_at], dir_fd):
                raise PermissionError(f"sandbox: {event} on {args[path_at]!r} outside the working directory")

    def refuse(name: str):
        def refused(*args, **kwargs):
            raise PermissionError(f"sandbox: os.{name} is not allowed")
        return refused

    sys.addaudithook(hook)
    import posix
    for name in _UNAUDITED:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, refuse(name))
