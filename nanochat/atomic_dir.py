"""Directories that appear complete or not at all, and manifests that tell a complete copy from a partial one.

A writer fills a hidden temp directory (`.NAME.tmp`), fsyncs each file and the directory, then renames it
to NAME (`install`). rename(2) is atomic, so a reader on the same filesystem sees no NAME or a complete one.
`install` never replaces an existing NAME: replacing a directory atomically needs Linux's renameat2
(RENAME_EXCHANGE), and the writers in this project never need it. `remove` renames NAME to `.NAME.old`
before deleting it, so a crash mid-delete never leaves a half-deleted NAME behind.

Copies made by other tools (rsync, scp, cloud sync) are not atomic: an interrupted `rsync -avP` leaves a
directory holding the files it reached first (it sends them in sorted order) and, with --partial, a
truncated last one. A manifest, {file name: {"size": bytes, "sha256": hex}}, stored in the directory's
own index file, lets a reader check that every file is there at its recorded size (a few stat calls) and,
when asked, that its contents hash to the recorded digest (reads every byte).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path


def temp_path(final: Path) -> Path:
    """Where the directory `final` is written before install."""
    return final.with_name(f".{final.name}.tmp")


def aside_path(final: Path) -> Path:
    """Where `remove` moves `final` before deleting it."""
    return final.with_name(f".{final.name}.old")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    # makes a rename or a new file's directory entry durable; directories cannot be opened on Windows
    if os.name == "posix":
        fsync_path(path)


def write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync one file (inside a temp directory, so no temp name of its own is needed)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def manifest(directory: Path, names: Iterable[str]) -> dict[str, dict]:
    """{name: {"size", "sha256"}} of files already written and fsynced in `directory`.

    Hashed right after writing, while the bytes are still in the page cache (about 1 GB/s per process).
    """
    return {name: {"size": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
            for name in sorted(names)}


def check_manifest(directory: Path, files: Mapping[str, Mapping], verify: bool = False) -> str | None:
    """None when every listed file is present at its recorded size, else what is wrong (one phrase).

    A size of None only requires the file to exist (indexes written before sizes were recorded).
    verify=True also hashes every file that records a sha256 and compares it.
    """
    for name, entry in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        if entry.get("size") is not None and size != entry["size"]:
            return f"{name} has {size} bytes, {entry['size']} were written"
    if verify:
        for name, entry in files.items():
            if entry.get("sha256") and sha256_file(directory / name) != entry["sha256"]:
                return f"{name} does not match its recorded sha256 (its contents changed after saving)"
    return None


def install(temp: Path, final: Path) -> None:
    """Rename the finished temp dir to `final`, which must not exist; then make the rename durable."""
    fsync_dir(temp)
    if final.exists():  # rename(2) would silently replace an empty directory
        raise FileExistsError(f"{final} exists; refusing to replace it")
    os.rename(temp, final)
    fsync_dir(final.parent)


def remove(path: Path) -> None:
    """Delete a directory so that no crash leaves a half-deleted one under its own name."""
    gone = aside_path(path)
    if path.name.startswith("."):  # already a temp or aside name: nobody reads it as complete
        gone = path
    else:
        shutil.rmtree(gone, ignore_errors=True)
        os.rename(path, gone)
    shutil.rmtree(gone)
