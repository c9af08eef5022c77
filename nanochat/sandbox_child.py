"""The child side of the sandbox in nanochat/execution.py: the code that runs inside each fresh
interpreter, around the model-written program.

The parent starts `python -I -B -X utf8 -c BOOTSTRAP ROOT CONFIG` in a new temporary directory; the
bootstrap puts ROOT on sys.path, imports this module (from its bytecode cache), takes ROOT off
sys.path again and calls `_child_main(CONFIG)`, which
- confines the process (`_confine`): joins the pids cgroup, dies with its parent, becomes a
  subreaper, enters namespaces of its own (`_namespaces`: no network; every mount read-only but a
  size-limited tmpfs on the temporary directory), sets the rlimits (and RLIMIT_NPROC),
  no_new_privs, Landlock (`_landlock`), a seccomp filter on socket() (`_seccomp`), and drops every
  capability; a layer the kernel does not offer is left out (and not reported), and when a step
  it does offer fails, the program does not run;
- without tests (`_run_plain`): installs the audit-hook guard (`_install_guard`), runs program.py as
  a clean `__main__` in this same process and reports how it ended, as JSON lines on the report
  pipe the parent reads. The program can write on that pipe too: its verdict is its own word;
- with tests (`_judge`): this process becomes the judge. It makes itself undumpable and forks the
  program's process (`_program_side`), which closes every descriptor of the judge's, makes a
  Landlock domain of its own, installs the guard, runs the program and then answers calls of the
  entry point with plain data over a pair of pipes. Only then does the judge read the tests and the
  run's nonce from its stdin (a pipe the program's process closes before any of its code runs), run
  the tests' check() against a stand-in that calls the program, and report the verdict with the
  nonce;
- kills and reaps every process the program started (`_reap_descendants`) and leaves by os._exit.
Confining is ordinary, tested Python rather than a string handed to `-c`.

This module imports only the standard library, nothing of nanochat (execution.py included), so that
each child starts fast; the parent imports from here the little both sides use (PROGRAM, `_signal`,
`_descendants`, LEAVE_OUT). What the sandbox does and does not isolate is described in nanochat/execution.py.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import json
import linecache
import math
import os
import resource
import signal
import struct
import sys
import time
import traceback
import types
from pathlib import Path

PROGRAM = "program.py"  # the file, in the temporary directory, that holds the code
_CLEANUP_S = 1.0  # seconds the child spends killing and reaping what the program started
_FRAME_LIMIT = 16 << 20  # bytes of one message between the program and the judge
_EXIT_GRACE_S = 0.5  # seconds the program's process gets to flush its output and leave at the end
_TMPFS_INODES = 8192  # files and directories the program may have in its tmpfs at once


def _child_main(config_json: str) -> None:
    config = json.loads(config_json)
    report_fd = config["report_fd"]

    def report(**fields) -> None:
        with contextlib.suppress(OSError):
            os.write(report_fd, (json.dumps(fields) + "\n").encode())

    try:
        source = Path(PROGRAM).read_text(encoding="utf-8")  # before a tmpfs covers the directory
        layers = _confine(config, source)
    except Exception as e:  # confinement is complete or the program does not run
        report(status="error", error=f"sandbox setup failed: {type(e).__name__}: {e}")
        os._exit(3)
    if config["entry_point"] is None:
        _run_plain(config, layers, source, report)
    else:
        _judge(config, layers, source, report)


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."


def _kind(e: BaseException) -> str:
    return "failed" if isinstance(e, AssertionError) else "memory" if isinstance(e, MemoryError) else "error"


def _print_from_caller(e: BaseException) -> None:
    """The traceback from the program's (or the tests') frames on, not the sandbox's."""
    with contextlib.suppress(BaseException):
        traceback.print_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


def _load_program(source: str) -> types.ModuleType:
    """Run the program as a clean `__main__` (not this module), as if by `python program.py`."""
    module = types.ModuleType("__main__")
    module.__file__ = os.path.abspath(PROGRAM)
    sys.modules["__main__"] = module
    sys.argv = [PROGRAM]  # the config is no business of the program
    exec(compile(source, PROGRAM, "exec"), module.__dict__)
    return module


def _run_plain(config: dict, layers: list[str], source: str, report) -> None:
    """Run the program in this process; its verdict is that it ran to its end, as it says itself."""
    leader = os.getpid()
    guard_on = _guard(config, layers)
    report(isolation=layers)
    status, error, module = "passed", "", None
    try:
        module = _load_program(source)
    except BaseException as e:  # SystemExit and KeyboardInterrupt are outcomes here too
        if os.getpid() != leader:  # a forked copy ran off its end: only the leader speaks for the program
            os._exit(1)
        status, error = _kind(e), _one_line(e)
        _print_from_caller(e)
    if os.getpid() != leader:
        os._exit(0)
    if status == "memory":  # give back what the program held, so that reporting can allocate
        sys.modules["__main__"].__dict__.clear()
    del module
    report(status=status, error=error)
    _flush()
    guard_on[0] = False  # the cleanup below kills, which the guard refuses to the program
    _reap_descendants()
    os._exit(0)


def _guard(config: dict, layers: list[str]) -> list[bool]:
    guard_on = [False]
    if config["guard"]:
        guard_on[0] = True
        _install_guard(config["workdir"], guard_on)
        layers.append("guard")
    return guard_on


# ---- the judge: tests in a process of their own


class ProgramError(Exception):
    """An exception the program raised that has no builtin counterpart, or the program's end."""


def _judge(config: dict, layers: list[str], source: str, report) -> None:
    """Fork the program's process, then read the tests and the nonce, run them, report the verdict."""
    libc = ctypes.CDLL(None, use_errno=True)
    if sys.platform.startswith("linux"):
        # undumpable: a process without CAP_SYS_PTRACE (the program) can neither trace this one nor
        # open its /proc/PID/{fd,mem,environ}; the program's process inherits it, which does no harm
        _prctl(libc, _PR_SET_DUMPABLE, 0)
    to_program_r, to_program_w = os.pipe()
    to_judge_r, to_judge_w = os.pipe()
    judge = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(to_program_w)
            os.close(to_judge_r)
            _program_side(config, layers, source, to_program_r, to_judge_w, judge, libc)
        finally:
            os._exit(1)
    os.close(to_program_r)
    os.close(to_judge_w)
    status, error = "error", "the judge failed"
    try:
        # only now, after the fork, do the secrets enter this process's memory
        secret = json.loads(_read_all(0))
        channel = _Channel(to_program_w, to_judge_r, pid)
        status, error = _run_tests(secret, config["entry_point"], channel)
    except BaseException as e:  # the judge's own failure: never a pass
        error = f"the judge failed: {_one_line(e)}"
        secret = {}
    with contextlib.suppress(OSError):
        os.close(to_program_w)  # the program's process sees the end of the calls and leaves
    _wait_for(pid, time.monotonic() + _EXIT_GRACE_S)
    _flush()
    _reap_descendants()
    layers = layers + ["guard"] * bool(config["guard"]) + ["landlock-judge"] * ("landlock-scope" in layers)
    report(nonce=secret.get("nonce"), status=status, error=error, isolation=layers + ["judge"])
    os._exit(0)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait_for(pid: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                time.sleep(0.002)
                continue
        return


def _run_tests(secret: dict, entry_point: str, channel: _Channel) -> tuple[str, str]:
    """Run the tests' check() against the program: (status, one-line error)."""
    namespace: dict = {"__name__": "__tests__", "__builtins__": builtins}
    try:
        for name in ("setup", "tests"):
            filename = f"<{name}>"  # tracebacks show the lines of the tests too
            linecache.cache[filename] = (len(secret[name]), None, secret[name].splitlines(True), filename)
            exec(compile(secret[name], filename, "exec"), namespace)
        check = namespace["check"]
    except BaseException as e:
        _print_from_caller(e)
        return "error", f"the tests did not load: {_one_line(e)}"
    first = channel.receive()
    if first is not None and first[:1] == ["load_error"] and len(first) == 3:  # the program did not load
        kind = first[1] if first[1] in ("failed", "memory", "error") else "error"
        return kind, str(first[2])[:500]
    if first != ["ready"]:
        channel.fail("error", "the program did not start its answers")
    if channel.broken:
        return channel.broken
    namespace[entry_point] = candidate = channel.stand_in(entry_point)  # tests that use the name itself
    try:
        check(candidate)
        status, error = "passed", ""
    except BaseException as e:
        status, error = _kind(e), _one_line(e)
        _print_from_caller(e)
    # the program's death or a broken exchange is never a pass, even where the tests caught it
    return channel.broken or (status, error)


class _Channel:
    """The judge's end of the exchange with the program: calls go out as plain data, answers come
    back as plain data (see _encode), so nothing of the program's but values reaches the tests."""

    def __init__(self, send_fd: int, receive_fd: int, pid: int):
        self.send_fd, self.receive_fd, self.pid = send_fd, receive_fd, pid
        self.broken: tuple[str, str] | None = None  # (status, error) once the program is gone

    def fail(self, status: str, error: str) -> None:
        self.broken = self.broken or (status, error)

    def receive(self) -> list | None:
        try:
            data = _read_frame(self.receive_fd)
            if data is not None:
                message = json.loads(data, object_pairs_hook=_decode_object)
                if isinstance(message, list) and message and isinstance(message[0], str):
                    return message
                self.fail("error", "the program broke the exchange with the judge")
                return None
        except Exception as e:  # an oversized, malformed or unbuildable message
            self.fail("error", f"the program broke the exchange with the judge: {_one_line(e)}")
            return None
        self._ended()
        return None

    def _ended(self) -> None:
        """The program's process closed its end: say how it ended."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)  # it may have closed the pipe and kept running
        try:
            _, wait_status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            self.fail("error", "the program ended before the tests were done")
            return
        if os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) != signal.SIGKILL:
            sig = os.WTERMSIG(wait_status)
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            if sig == signal.SIGXCPU:
                self.fail("timeout", "the program was killed by SIGXCPU (CPU time limit)")
            else:
                self.fail("killed", f"the program was killed by {name}")
        elif os.WIFEXITED(wait_status):
            code = os.WEXITSTATUS(wait_status)
            self.fail("error", f"the program exited with code {code} before the tests were done")
        else:
            self.fail("error", "the program stopped answering before the tests were done")

    def call(self, args: tuple, kwargs: dict):
        if self.broken:
            raise ProgramError(self.broken[1])
        request = json.dumps(["call", _encode(list(args)), _encode(dict(kwargs))]).encode()
        try:
            _write_frame(self.send_fd, request)
        except OSError:  # it closed its end: the answer below says how it ended
            pass
        answer = self.receive()
        if answer is not None and answer[0] == "value" and len(answer) == 2:
            return answer[1]
        if answer is not None and answer[0] == "raise" and len(answer) == 3:
            raise _rebuild(answer[1], answer[2])
        self.fail("error", "the program broke the exchange with the judge")
        raise ProgramError(self.broken[1] if self.broken else "")

    def stand_in(self, name: str):
        def candidate(*args, **kwargs):
            return self.call(args, kwargs)
        candidate.__name__ = candidate.__qualname__ = name
        return candidate


def _rebuild(name, message) -> Exception:
    """The judge's copy of an exception the program raised: the builtin class of that name, built
    from its message, or ProgramError. Nothing of the program's runs here."""
    cls = getattr(builtins, name, None) if isinstance(name, str) and name.isidentifier() else None
    text = str(message)[:500]
    if isinstance(cls, type) and issubclass(cls, Exception):
        with contextlib.suppress(Exception):  # some need more than a message (UnicodeDecodeError)
            return cls(text)
    return ProgramError(f"{name}: {text}")


def _program_side(config: dict, layers: list[str], source: str, requests: int, answers: int, judge: int,
                  libc) -> None:
    """The program's process: forget the judge, confine further, run the program, answer calls."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the judge's stdin carries the tests and the nonce: not ours to read
    os.close(null)
    low, high = sorted((requests, answers))
    os.closerange(3, low)  # the report pipe and anything else the judge holds
    os.closerange(low + 1, high)
    os.closerange(high + 1, os.sysconf("SC_OPEN_MAX"))
    if sys.platform.startswith("linux"):
        _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != judge:
            os._exit(5)
    if "landlock-fs" in layers:
        # a domain of its own, nested in the judge's: from ABI 6 it cannot signal the judge (nor,
        # from ABI 1, trace it), and its writes stay beneath the directory
        _landlock(libc, config["workdir"])
    _guard(config, [])
    entry_point = config["entry_point"]
    try:
        module = _load_program(source)
        function = module.__dict__.get(entry_point)
        if not callable(function):
            raise NameError(f"the program defines no function {entry_point!r}")
    except BaseException as e:
        _print_from_caller(e)
        _flush()
        with contextlib.suppress(BaseException):
            _write_frame(answers, json.dumps(["load_error", _kind(e), _one_line(e)]).encode())
        os._exit(1)
    _write_frame(answers, b'["ready"]')
    while (data := _read_frame(requests)) is not None:
        _, args, kwargs = json.loads(data, object_pairs_hook=_decode_object)
        try:
            answer = ["value", _encode(function(*args, **kwargs))]
        except BaseException as e:
            answer = ["raise", type(e).__name__, str(e)]
        try:
            _write_frame(answers, json.dumps(answer).encode())
        except (TypeError, ValueError) as e:  # a value that cannot be written as JSON
            _write_frame(answers, json.dumps(["raise", type(e).__name__, str(e)]).encode())
    _flush()
    os._exit(0)


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> bytes | None:
    """One message, None at the end of the stream."""
    header = _read_exactly(fd, 4)
    if header is None:
        return None
    (size,) = struct.unpack(">I", header)
    if size > _FRAME_LIMIT:
        raise ValueError(f"a message of {size} bytes is over the limit of {_FRAME_LIMIT}")
    return _read_exactly(fd, size)


# Values cross between the program and the judge as JSON: None, bool, int, float and str as
# themselves, the containers as one-key objects. Subclasses travel as their base type, so that no
# method of the program's (an __eq__ that always says yes) ever runs in the judge.
_TAGS = ((list, "l"), (tuple, "t"), (frozenset, "f"), (set, "s"))


def _encode(value):
    if value is None or type(value) in (bool, int, float, str):
        return value
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, dict):
        return {"d": [[_encode(k), _encode(v)] for k, v in value.items()]}
    for base, tag in _TAGS:
        if isinstance(value, base):
            return {tag: [_encode(v) for v in value]}
    if isinstance(value, (bytes, bytearray)):
        return {"b": bytes(value).hex()}
    if isinstance(value, complex):
        return {"c": [value.real, value.imag]}
    raise TypeError(f"a {type(value).__name__} cannot pass between the program and the tests "
                    "(only None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)")


def _decode_object(pairs: list):
    if len(pairs) != 1:
        raise ValueError("not a tagged value")
    tag, items = pairs[0]
    if tag == "d":
        return {k: v for k, v in items}
    if tag == "b":
        return bytes.fromhex(items)
    if tag == "c":
        return complex(float(items[0]), float(items[1]))
    for base, known in _TAGS:
        if tag == known:
            return base(items)
    raise ValueError(f"unknown tag {tag!r}")


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


# prctl options, namespace and mount flags, Landlock constants (linux/prctl.h, linux/sched.h,
# linux/mount.h, linux/landlock.h); these system calls have the same numbers on every architecture
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
_PR_SET_CHILD_SUBREAPER = 36
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 1 << 1, 1 << 2, 1 << 14, 1 << 18
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_WRITE_FILE, _LANDLOCK_TRUNCATE = 1 << 1, 1 << 14
# the rights that change the file system (not READ_FILE, READ_DIR, EXECUTE: imports read anywhere),
# each with the ABI that introduced it: WRITE_FILE, REMOVE_DIR ... MAKE_SYM, REFER, TRUNCATE
_LANDLOCK_FS_WRITES = [(1 << b, 1) for b in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12)] + [(1 << 13, 2), (1 << 14, 3)]
_LANDLOCK_NET_TCP = 0b11  # BIND_TCP | CONNECT_TCP, ABI 4
_LANDLOCK_SCOPES = 0b11  # ABSTRACT_UNIX_SOCKET | SIGNAL, ABI 6
# seccomp (linux/seccomp.h, linux/filter.h, linux/audit.h): per architecture the AUDIT_ARCH value and
# the number of socket(); io_uring_setup is 425 on both
_SECCOMP_ARCHES = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
_NR_IO_URING_SETUP, _X32_SYSCALL_BIT = 425, 0x40000000
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
LEAVE_OUT = ("netns", "mntns", "landlock", "seccomp")  # layers a caller may leave out, to see the rest alone


def _confine(config: dict, source: str) -> list[str]:
    """Put this process in its sandbox; return the layers in place."""
    linux = sys.platform.startswith("linux")  # prctl, namespaces, Landlock, capabilities, /proc: Linux's
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.geteuid() == 0
    layers = []
    if config["cgroup"]:  # first, while writing outside the sandbox is still allowed
        Path(config["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
        layers.append("pids-cgroup")
    if linux:
        _prctl(libc, _PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the parent...
        if os.getppid() != config["parent"]:  # ...even if it died before the line above
            os._exit(5)
        _prctl(libc, _PR_SET_CHILD_SUBREAPER, 1)
        layers += _namespaces(libc, config, source, root)
    cpu = math.ceil(config["timeout"]) + 1  # the parent's wall clock comes first; this is a backstop
    for limit, value in ((resource.RLIMIT_AS, config["memory_mb"] << 20), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, config["max_file_mb"] << 20), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value + 1 if limit == resource.RLIMIT_CPU else value))
    layers.append("rlimits")
    if linux and not root:  # RLIMIT_NPROC counts all the user's tasks: allow ours on top
        nproc = _tasks_of_user(os.getuid()) + config["max_processes"] - 1
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        layers.append("nproc")
    if linux:
        _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)  # Landlock needs it; exec of setuid files gains nothing
        if "landlock" not in config["without"]:
            layers += _landlock(libc, config["workdir"])
        if "seccomp" not in config["without"]:
            layers += _seccomp(libc)
        if root or "userns" in layers:  # a user namespace gives every capability inside it
            _drop_capabilities(libc)
            layers.append("no-capabilities")
    return layers


def _namespaces(libc, config: dict, source: str, root: bool) -> list[str]:
    """Enter a network namespace (no interface but a loopback that is down) and a mount namespace
    (every mount read-only but a tmpfs of disk_mb on the directory), as far as the kernel lets us:
    as root directly, else inside a user namespace. [] where it lets us do neither."""
    without = config["without"]
    flags = (_CLONE_NEWNET * ("netns" not in without)) | (_CLONE_NEWNS * ("mntns" not in without))
    if not flags:
        return []
    layers = []
    if not (root and libc.unshare(ctypes.c_int(flags)) == 0):
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(ctypes.c_int(_CLONE_NEWUSER | flags)) != 0:
            return []
        # from here on a failure stops the run: a user namespace without a mapping is no place to run in
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        layers.append("userns")
    if flags & _CLONE_NEWNET:
        layers.append("netns")
    if flags & _CLONE_NEWNS:
        layers += _private_mounts(libc, config, source)
    return layers


def _mount(libc, source: bytes | None, target: bytes, fstype: bytes | None, flags: int,
           data: bytes | None) -> None:
    if libc.mount(source, target, fstype, ctypes.c_ulong(flags), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target.decode()}: {os.strerror(err)}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _private_mounts(libc, config: dict, source: str) -> list[str]:
    """In this process's own mount namespace: a tmpfs of disk_mb over the directory, every other
    mount read-only. Mounts are made private first, so that nothing of this reaches the host."""
    _mount(libc, None, b"/", None, _MS_REC | _MS_PRIVATE, None)
    workdir = config["workdir"].encode()
    try:
        options = f"size={config['disk_mb']}m,nr_inodes={_TMPFS_INODES},mode=0700"
        _mount(libc, b"sandbox", workdir, b"tmpfs", _MS_NOSUID | _MS_NODEV, options.encode())
    except OSError:
        return []
    os.chdir(workdir)  # onto the tmpfs: the old cwd is the directory beneath it
    Path(PROGRAM).write_text(source, encoding="utf-8")  # for tracebacks and __file__
    layers = ["disk-quota"]
    with contextlib.suppress(OSError):  # mount_setattr: Linux >= 5.12
        _syscall(libc, _SYS_MOUNT_SETATTR, ctypes.c_int(_AT_FDCWD), b"/", ctypes.c_uint(_AT_RECURSIVE),
                 ctypes.byref(_MountAttr(attr_set=_MOUNT_ATTR_RDONLY)), ctypes.c_size_t(32))
        _syscall(libc, _SYS_MOUNT_SETATTR, ctypes.c_int(_AT_FDCWD), workdir, ctypes.c_uint(0),
                 ctypes.byref(_MountAttr(attr_clr=_MOUNT_ATTR_RDONLY)), ctypes.c_size_t(32))
        layers.append("read-only-mounts")
    return layers


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


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp(libc) -> list[str]:
    """A seccomp filter that refuses socket() for every family (socketpair() stays, for pipes between
    processes) and io_uring_setup() (whose rings can open sockets too): no TCP, UDP, MPTCP, raw,
    netlink or unix socket, path-bound or abstract. [] on an architecture not in the table."""
    arch = _SECCOMP_ARCHES.get(os.uname().machine)
    if arch is None:
        return []
    audit_arch, nr_socket = arch
    refuse = _SECCOMP_RET_ERRNO | 13  # EACCES, as Landlock answers
    program = [  # (code, jump if true, jump if false, k); jumps count from the next instruction
        (_BPF_LD_W_ABS, 0, 0, 4),  # 0: seccomp_data.arch
        (_BPF_JEQ_K, 1, 0, audit_arch),  # 1: ours: on at 3
        (_BPF_RET_K, 0, 0, refuse),  # 2: another ABI (i386's int 0x80 on x86_64): refused whole
        (_BPF_LD_W_ABS, 0, 0, 0),  # 3: seccomp_data.nr
        (_BPF_JGE_K, 2, 0, _X32_SYSCALL_BIT),  # 4: x32 numbers: refused
        (_BPF_JEQ_K, 1, 0, nr_socket),  # 5: socket(): refused
        (_BPF_JEQ_K, 0, 1, _NR_IO_URING_SETUP),  # 6: io_uring_setup(): refused, else allowed
        (_BPF_RET_K, 0, 0, refuse),  # 7
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),  # 8
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*instruction) for instruction in program))
    fprog = _SockFprog(len(program), filters)
    if libc.prctl(ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        if err == 22:  # EINVAL: a kernel built without seccomp filters
            return []
        raise OSError(err, f"seccomp: {os.strerror(err)}")
    return ["seccomp"]


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
