"""Pretraining corpora: a registry of text sources, verified shard downloads, and the embedded corpus.

    python -m nanochat.dataset -n 8                    # FineWeb-Edu shards 0-7 + the validation shard
    python -m nanochat.dataset --corpus=ko -n 8        # FineWeb-2 Korean (Arrow, converted to parquet)
    python -m nanochat.dataset --corpus=embedded       # offline: shards built from the local Python install
    python -m nanochat.dataset --corpus=/data/shards   # a local folder of .parquet or .arrow files
    python -m nanochat.dataset --corpus=/data/mixed.jsonl   # JSON lines (a file or folder): shards of their `text`
    python -m nanochat.dataset --corpus='https://host/x/shard_{index:05d}.parquet' --num_total_shards=100 -n 8

A data dir ($NANOCHAT_BASE_DIR/base_data for English, base_data_ko for Korean, base_data_<name>
otherwise) holds `shard_NNNNN.parquet` files with one `text` column and a `manifest.json` (source,
shard count, validation shard, size and sha256 of each shard). The last shard of a corpus (index
num_total_shards - 1) is the validation split and is always fetched, so validation never depends
on how many shards were downloaded. Training asks list_shards("train" | "val").

Only rank 0 downloads: run this before training, or call download() on the master process
(common.get_dist_info().is_master) only. Other ranks must not call download(); it raises there.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nanochat.common import file_lock, get_base_dir, get_dist_info, print0, run_main, write_json_atomic
from nanochat.config import format_config, parse_args
from nanochat.download import USER_AGENT, DownloadError, download_many
from nanochat.shards import (
    check_arrow_shard,
    check_parquet_shard,
    convert_arrow_to_parquet,
    sha256_file,
)

SHARD_CHARS = 1_000_000  # characters per embedded shard: a CPU run still sees several shards
HF_ENDPOINT = "https://huggingface.co"
ENDPOINT_ENVS = ("NANOCHAT_HF_ENDPOINT", "HF_ENDPOINT")  # ours wins; HF_ENDPOINT is what HF tools read for mirrors
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.json"  # the Hugging Face file listing, fetched once per data dir
RETRY_BACKOFF = 1.0  # s, first retry delay handed to download_file (tests shrink it)
CONVERT_BATCH = 16  # Arrow files fetched before converting them: bounds the disk held by unconverted files
API_TIMEOUT = 30.0  # s, for the checksum listing


class DatasetError(ValueError):
    """A bad source or option; the message is one line saying what to pass instead."""


class DataNotFound(FileNotFoundError):
    """No shards where training looks; the message gives the exact command that fetches them."""


@dataclass(frozen=True)
class DataSource:
    """One pretraining corpus: where its shards come from and which data dir they go to."""

    name: str  # registry key, or derived from a folder / URL template
    kind: str  # "hf" (Hugging Face dataset repo), "url" (URL or path template), "folder", "embedded", "jsonl"
    description: str = ""
    num_total_shards: int = 0  # shards in the corpus, the last being validation; 0 = known once built
    hf_repo: str = ""  # kind "hf": owner/name of the dataset repo
    template: str = ""  # "hf": file path in the repo; "url": full URL or path; both with {index}
    folder: str = ""  # kind "folder": the folder; shard i is files[i]
    files: tuple[str, ...] = ()
    file_format: str = "parquet"  # "parquet" (kept as served) or "arrow" (IPC, converted to parquet)
    data_dir_name: str = ""  # '' = base_data_<name>

    @property
    def dirname(self) -> str:
        return self.data_dir_name or f"base_data_{self.name}"

    @property
    def val_index(self) -> int:
        return self.num_total_shards - 1

    @property
    def origin(self) -> str:
        """Where the bytes come from, independent of any mirror endpoint (compared across runs)."""
        if self.kind == "hf":
            return f"{HF_ENDPOINT}/datasets/{self.hf_repo}/resolve/main/{self.template}"
        if self.kind in ("folder", "jsonl"):
            return self.folder
        return self.template or f"embedded:{self.name}"

    def remote_name(self, index: int) -> str:
        return self.files[index] if self.kind == "folder" else self.template.format(index=index)

    def url(self, index: int, endpoint: str) -> str:
        if self.kind == "hf":
            return f"{endpoint}/datasets/{self.hf_repo}/resolve/main/{self.remote_name(index)}"
        if self.kind == "folder":
            return str(Path(self.folder) / self.files[index])
        return self.remote_name(index)

    def command(self) -> str:
        """The command line that fills this source's data dir (without -n)."""
        if self.kind in ("hf", "embedded"):
            return "python -m nanochat.dataset" + ("" if self.name == DEFAULT_SOURCE else f" --corpus={self.name}")
        extra = f" --num_total_shards={self.num_total_shards}" if self.kind == "url" else ""
        return f"python -m nanochat.dataset --corpus={shlex.quote(self.origin)} --name={self.name}{extra}"


SOURCES: dict[str, DataSource] = {
    s.name: s
    for s in (
        DataSource("fineweb-edu", "hf", "FineWeb-Edu, 100B tokens, shuffled (English)", 1823,
                   "karpathy/fineweb-edu-100b-shuffle", "shard_{index:05d}.parquet", data_dir_name="base_data"),
        DataSource("ko", "hf", "FineWeb-2 Korean (Arrow IPC shards, converted to parquet on arrival)", 502,
                   "minpeter/fineweb-2-edu-korean-raw", "data-{index:05d}-of-00502.arrow", file_format="arrow",
                   data_dir_name="base_data_ko"),
        DataSource("embedded", "embedded", "English prose and code from the local Python install (offline)"),
        DataSource("embedded-ko", "embedded", "Korean texts shipped in the konlpy wheel (offline)"),
    )
}
ALIASES = {"en": "fineweb-edu", "english": "fineweb-edu", "fineweb": "fineweb-edu",
           "korean": "ko", "fineweb2-ko": "ko"}
DEFAULT_SOURCE = "fineweb-edu"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def hf_endpoint() -> str:
    for env in ENDPOINT_ENVS:
        value = os.environ.get(env, "").strip()
        if value:
            return value.rstrip("/")
    return HF_ENDPOINT


# ----------------------------------------------------------------------------- resolving a source


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "custom"


def resolve_source(spec: str | DataSource, *, name: str | None = None, num_total_shards: int | None = None) -> DataSource:
    """A registry name or alias, a folder of .parquet / .arrow files, or a URL / path template with {index}.

    name: data dir suffix for a folder or template (default: derived from it).
    num_total_shards: required for a template; the shard at index num_total_shards - 1 is validation.
    """
    if isinstance(spec, DataSource):
        return spec
    key = ALIASES.get(spec.strip().lower(), spec.strip().lower())
    if key in SOURCES:
        if name or num_total_shards:
            raise DatasetError(f"--name and --num_total_shards apply to a folder or URL template, not to {key!r}")
        return SOURCES[key]
    if "{index" in spec:
        return _template_source(spec, name, num_total_shards)
    path = Path(spec).expanduser()
    if _is_jsonl_corpus(path):  # rebuilt whole on every run, like an embedded source
        return DataSource(_slug(name or (path.stem if path.is_file() else path.name)), "jsonl",
                          f"JSON lines {path.resolve()}", folder=str(path.resolve()))
    if path.is_dir():
        if num_total_shards:
            raise DatasetError("--num_total_shards is not needed with a folder: every file in it is a shard")
        return _folder_source(path.resolve(), name)
    known = ", ".join(SOURCES)
    raise DatasetError(f"unknown source {spec!r}: use one of {known}, a folder of .parquet/.arrow files, "
                       "or a URL template such as 'https://host/x/shard_{index:05d}.parquet' with --num_total_shards")


def _is_jsonl_corpus(path: Path) -> bool:
    from nanochat.text_sources import is_jsonl_corpus  # imported here: text_sources imports this module

    return is_jsonl_corpus(path)


def _template_source(spec: str, name: str | None, total: int | None) -> DataSource:
    try:
        first, second = spec.format(index=0), spec.format(index=1)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise DatasetError(f"bad URL template {spec!r} ({e!r}): the only field is {{index}}, e.g. {{index:05d}}") from None
    if first == second:
        raise DatasetError(f"URL template {spec!r} gives the same URL for every shard")
    if total is None or total < 2:
        raise DatasetError("a URL template needs --num_total_shards=N (N >= 2; shard N-1 is the validation shard)")
    parsed = urllib.parse.urlsplit(first)
    suffix = Path(parsed.path if parsed.scheme in ("http", "https", "file") else first).suffix.lower()
    if suffix not in (".parquet", ".arrow"):
        raise DatasetError(f"URL template {spec!r} must name .parquet or .arrow files")
    if not name:
        # the folders above the file name, minus the generic parts of hosting URLs
        generic = {"", "resolve", "main", "raw", "datasets", "blob", "data", "files"}
        folders = [p for p in Path(urllib.parse.urlsplit(spec).path).parent.parts if p.strip("/")]
        parts = [p for p in folders if p not in generic] or folders
        name = "-".join(parts[-2:]) or urllib.parse.urlsplit(spec).hostname or "url"
    return DataSource(_slug(name), "url", f"URL template {spec}", total, template=spec, file_format=suffix[1:])


def _folder_source(folder: Path, name: str | None) -> DataSource:
    for suffix in ("parquet", "arrow"):
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob(f"*.{suffix}") if p.is_file())
        if files:
            break
    else:
        raise DatasetError(f"{folder} holds no .parquet or .arrow files")
    if len(files) < 2:
        raise DatasetError(f"{folder} holds one shard; a corpus needs at least 2 (the last one is validation)")
    return DataSource(_slug(name or folder.name), "folder", f"local folder {folder}", len(files),
                      folder=str(folder), files=tuple(files), file_format=suffix)


def data_dir_of(source: str | DataSource) -> Path:
    return get_base_dir() / resolve_source(source).dirname


# ----------------------------------------------------------------------------- manifest files


def _write_json(path: Path, data) -> None:
    write_json_atomic(path, data, indent=1, sort_keys=True, ensure_ascii=False)


def read_manifest(data_dir: str | os.PathLike) -> dict | None:
    """The data dir's manifest.json, or None when absent or unreadable (shards are then re-verified)."""
    try:
        data = json.loads((Path(data_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _new_manifest(src: DataSource, out: Path, checksums: str) -> dict:
    """The manifest to fill, keeping the shard records of an earlier run of the same source."""
    fresh = {"format": 1, "source": src.name, "description": src.description, "origin": src.origin,
             "command": src.command(), "num_total_shards": src.num_total_shards,
             "val_shard": shard_name(src.val_index), "checksums": checksums, "shards": {}}
    old = read_manifest(out)
    if old is None or src.kind in ("embedded", "jsonl"):  # these dirs are rebuilt whole every time
        return fresh
    if any(old.get(k) != fresh[k] for k in ("source", "origin", "num_total_shards")):
        raise DatasetError(
            f"{out} already holds {old.get('source')!r} from {old.get('origin')} ({old.get('num_total_shards')} "
            f"shards), not {src.origin} ({src.num_total_shards} shards); its validation shard would change: "
            "delete that folder or give this source another --name")
    fresh["shards"] = dict(old.get("shards") or {})
    fresh["checksums"] = old.get("checksums") if checksums == "unknown" else checksums
    return fresh


def fetch_hf_checksums(repo: str, endpoint: str | None = None, timeout: float = API_TIMEOUT) -> dict[str, dict]:
    """{path: {"size", "sha256"}} for every file of a Hugging Face dataset repo, from its tree API.

    The sha256 is the LFS oid (the hash of the file's bytes); files not in LFS get size only.
    Follows the `Link: <...>; rel="next"` pagination. Raises OSError / ValueError on failure.
    """
    url = f"{endpoint or hf_endpoint()}/api/datasets/{repo}/tree/main"
    files: dict[str, dict] = {}
    for _ in range(10_000):  # a server that links pages in a circle must not keep us here forever
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            entries = json.load(resp)
            link = resp.headers.get("Link", "")
        if not isinstance(entries, list):
            raise ValueError(f"{url}: expected a JSON list of files, got {type(entries).__name__}")
        for e in entries:
            if not isinstance(e, dict) or e.get("type") != "file" or not isinstance(e.get("path"), str):
                continue
            lfs = e.get("lfs") if isinstance(e.get("lfs"), dict) else {}
            oid = str(lfs.get("oid", "")).lower()
            size = lfs.get("size", e.get("size"))
            files[e["path"]] = {"size": size if isinstance(size, int) and size >= 0 else None,
                                "sha256": oid if re.fullmatch(r"[0-9a-f]{64}", oid) else None}
        nxt = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
        if not nxt:
            return files
        url = urllib.parse.urljoin(url, nxt.group(1))
    raise ValueError(f"{url}: too many pages")


def _remote_checks(src: DataSource, out: Path, endpoint: str) -> tuple[dict[str, dict], str]:
    """(listing, what the manifest should say about checksums). Cached in the data dir after one fetch."""
    if src.kind != "hf":
        return {}, "none from the source; sha256 computed on arrival"
    cache = out / CHECKSUMS
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("repo") == src.hf_repo and isinstance(cached.get("files"), dict):
            return cached["files"], f"sha256 from the Hugging Face listing ({CHECKSUMS})"
    except (OSError, ValueError, AttributeError):
        pass  # absent or damaged: fetch it again
    try:
        files = fetch_hf_checksums(src.hf_repo, endpoint)
    except (OSError, http.client.HTTPException, ValueError) as e:
        reason = str(getattr(e, "reason", None) or e).replace("\n", " ")
        print0(f"note: cannot fetch the checksum listing of {src.hf_repo} from {endpoint} ({reason}); "
               "checking shards by size and footer only")
        return {}, "unknown"
    _write_json(cache, {"repo": src.hf_repo, "files": files})
    return files, f"sha256 from the Hugging Face listing ({CHECKSUMS})"


def _record(path: Path, sha256: str | None = None, **extra) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256 or sha256_file(path), **extra}


def _unchanged(path: Path, entry: dict | None) -> bool:
    """Trust a shard whose size and mtime are those recorded when it was verified (like make or
    rsync), so a rerun over hundreds of 100 MB shards does not re-hash them; --verify re-hashes."""
    if not entry or not path.is_file():
        return False
    st = path.stat()
    return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


def _exclusive(directory: Path):
    """One writer per data dir: two downloaders appending to the same .part file would corrupt it."""
    return file_lock(directory / ".lock", wait=False, busy_message=(
        f"another nanochat.dataset process is writing {directory}; let it finish (or stop it) and rerun"),
        error=DatasetError)


# ----------------------------------------------------------------------------- downloading


def download(source: str | DataSource = DEFAULT_SOURCE, num_shards: int | None = None, *, workers: int = 4,
             verify: bool = False, retries: int = 5, endpoint: str | None = None,
             max_chars: int | None = None, shard_chars: int = SHARD_CHARS, text_field: str | None = None) -> list[Path]:
    """Fetch the first `num_shards` training shards (None = all, 0 = none) and the validation shard.

    Returns the shard paths, training first, validation last. Shards already complete are skipped;
    every new file is verified (size and sha256 when known, parquet footer or full Arrow read, no
    HTML or LFS pointer) before it gets its final name. Arrow sources are converted to parquet and
    their Arrow files deleted once the parquet is complete, which makes the conversion resumable:
    a complete parquet is never redone, a leftover verified Arrow file is converted without a request.
    Embedded sources are built, not fetched (max_chars / shard_chars size them).

    Rank 0 only: other ranks must wait for rank 0 (or for this CLI), never call this.
    """
    if not get_dist_info().is_master:
        raise DatasetError("only rank 0 downloads data: run python -m nanochat.dataset before launching, "
                           "or call download() on the master process only")
    if num_shards is not None and num_shards < 0:
        raise DatasetError(f"-n/--num_shards must be >= 0 (or none for all), got {num_shards}")
    if workers < 1:
        raise DatasetError(f"--workers must be >= 1, got {workers}")
    src = resolve_source(source)
    out = get_base_dir() / src.dirname
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        if src.kind in ("embedded", "jsonl"):
            from nanochat.local_corpus import build_local_corpus  # it imports this module

            return build_local_corpus(src, out, num_shards, max_chars, shard_chars, text_field)
        return _fetch(src, out, num_shards, workers, verify, retries, endpoint or hf_endpoint())


def _fetch(src: DataSource, out: Path, num_shards: int | None, workers: int, verify: bool, retries: int,
           endpoint: str) -> list[Path]:
    n_train = src.val_index if num_shards is None else min(num_shards, src.val_index)
    if num_shards is not None and num_shards > src.val_index:
        print0(f"note: {src.name} has only {src.val_index} training shards; fetching all of them")
    indices = [*range(n_train), src.val_index]
    manifest = _new_manifest(src, out, "unknown")
    entries = manifest["shards"]
    todo = [i for i in indices if verify or not _unchanged(out / shard_name(i), entries.get(shard_name(i)))]
    if src.file_format == "arrow":
        for i in set(indices) - set(todo):  # left by a crash between conversion and cleanup
            (out / f"shard_{i:05d}.arrow").unlink(missing_ok=True)
    print0(f"{src.name}: {n_train} training shard(s) + validation {shard_name(src.val_index)} in {out} "
           f"({len(indices) - len(todo)} complete, {len(todo)} to check or fetch)")
    try:
        if todo:
            listing, manifest["checksums"] = _remote_checks(src, out, endpoint)
            fetch = _fetch_parquet if src.file_format == "parquet" else _fetch_arrow
            fetch(src, out, todo, listing, entries, workers=workers, retries=retries, endpoint=endpoint)
    finally:
        _write_json(out / MANIFEST, manifest)  # what did complete stays recorded for the rerun
    return [out / shard_name(i) for i in indices]


def _fetch_parquet(src, out, todo, listing, entries, *, workers, retries, endpoint) -> None:
    jobs = []
    for i in todo:
        remote = listing.get(src.remote_name(i)) or {}
        entry = entries.get(shard_name(i)) or {}
        # a shard once recorded keeps its bytes: its record checks it where the source has no checksums
        jobs.append((src.url(i, endpoint), out / shard_name(i),
                     {"expected_size": remote.get("size") or entry.get("size"),
                      "sha256": remote.get("sha256") or entry.get("sha256"),
                      "validate": check_parquet_shard, "retries": retries, "backoff": RETRY_BACKOFF}))
    # download_file skips a file already at its final name that passes these checks, without a request
    download_many(jobs, workers=workers, desc=src.name)
    # recorded only once all succeeded: after a failure the rerun re-verifies (no re-download) instead
    for i, (_, path, kwargs) in zip(todo, jobs):
        entries[path.name] = _record(path, kwargs["sha256"], index=i, source_file=src.remote_name(i))


def _fetch_arrow(src, out, todo, listing, entries, *, workers, retries, endpoint) -> None:
    pending = []
    for i in todo:
        parquet, entry = out / shard_name(i), entries.get(shard_name(i)) or {}
        if parquet.is_file():  # converted earlier but changed since, or --verify: check it locally
            try:
                check_parquet_shard(parquet)
                sha = sha256_file(parquet)
                good = entry.get("sha256") in (None, sha)
            except DownloadError:
                good = False
            if good:
                (out / f"shard_{i:05d}.arrow").unlink(missing_ok=True)
                entries[parquet.name] = {**entry, **_record(parquet, sha, index=i)}
                continue
            parquet.unlink()
        pending.append(i)
    step = max(CONVERT_BATCH, 2 * workers)
    for start in range(0, len(pending), step):
        batch = pending[start:start + step]
        shas = [(listing.get(src.remote_name(i)) or {}).get("sha256") for i in batch]
        jobs = [(src.url(i, endpoint), out / f"shard_{i:05d}.arrow",
                 {"expected_size": (listing.get(src.remote_name(i)) or {}).get("size"), "sha256": sha,
                  "validate": check_arrow_shard, "retries": retries, "backoff": RETRY_BACKOFF})
                for i, sha in zip(batch, shas)]
        download_many(jobs, workers=workers, desc=f"{src.name} {start + 1}-{start + len(batch)}/{len(pending)}")
        # pyarrow releases the GIL while decoding and compressing, so threads convert in parallel
        with ThreadPoolExecutor(max_workers=min(workers, os.cpu_count() or 1)) as pool:
            for i, entry in zip(batch, pool.map(_convert_shard, [src] * len(batch), [out] * len(batch), batch, shas)):
                entries[shard_name(i)] = entry


def _convert_shard(src: DataSource, out: Path, index: int, source_sha256: str | None) -> dict:
    arrow, parquet = out / f"shard_{index:05d}.arrow", out / shard_name(index)
    docs = convert_arrow_to_parquet(arrow, parquet)
    entry = _record(parquet, index=index, documents=docs, source_file=src.remote_name(index),
                    source_size=arrow.stat().st_size, source_sha256=source_sha256)
    arrow.unlink()  # the parquet is complete, so the Arrow copy has done its job
    return entry


# ----------------------------------------------------------------------------- the training side


def _locate(data_dir: str | os.PathLike | None) -> tuple[Path, DataSource | None]:
    """(directory, registry source or None) for a source name, a base_data_<name> suffix or a path."""
    base = get_base_dir(create=False)
    if data_dir is None:
        data_dir = DEFAULT_SOURCE
    if isinstance(data_dir, str):
        key = ALIASES.get(data_dir.lower(), data_dir.lower())
        if key in SOURCES:
            return base / SOURCES[key].dirname, SOURCES[key]
        if _is_jsonl_corpus(Path(data_dir).expanduser()):  # training reads the shards built from it
            src = resolve_source(data_dir)
            return base / src.dirname, src
        if not re.search(r"[/\\]", data_dir) and not data_dir.startswith(("~", ".")):
            return base / f"base_data_{data_dir}", None  # the <name> of a folder / URL source
    path = Path(data_dir).expanduser()
    for src in SOURCES.values():  # a registry dir given by path still gets the registry's fix
        if path.absolute() == (base / src.dirname).absolute():
            return path, src
    return path, None


def fetch_command(data_dir: str | os.PathLike | None = None) -> str:
    """The command that fills a data dir, for error messages on the training side."""
    directory, src = _locate(data_dir)
    if src is not None:
        if src.name == DEFAULT_SOURCE:
            return f"{src.command()} -n 8 (offline: {src.command()} --corpus=embedded)"
        return src.command() + ("" if src.kind in ("embedded", "jsonl") else " -n 8")
    manifest = read_manifest(directory)
    if manifest and manifest.get("command"):
        return f"{manifest['command']} -n 8"
    return ("python -m nanochat.dataset --corpus=FOLDER_OR_URL_TEMPLATE -n 8, or put .parquet shards with a "
            "text column there (the last in sorted order is the validation shard)")


def list_shards(split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Sorted parquet shards of one split: "val" is the validation shard, "train" all the others present.

    data_dir: None (English, base_data), a source name (fineweb-edu, ko, embedded, embedded-ko), the
    <name> of a base_data_<name> dir, or a path. The validation shard is the one the manifest names,
    else the registry's last index, else the last file in sorted order. Raises DataNotFound at once
    (never waits for a download) with the command to run.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    directory, src = _locate(data_dir)
    files = sorted(p for p in directory.glob("*.parquet") if p.is_file()) if directory.is_dir() else []
    manifest = read_manifest(directory)
    if manifest and manifest.get("val_shard"):
        val_name = manifest["val_shard"]
    elif src is not None and src.num_total_shards:
        val_name = shard_name(src.val_index)
    else:
        val_name = files[-1].name if files else None
    found = [p for p in files if (p.name == val_name) == (split == "val")]
    if not found:
        what = "training shards" if split == "train" else f"validation shard ({val_name or 'none'})"
        raise DataNotFound(f"no {what} in {directory}: run {fetch_command(data_dir)}")
    return found


# ----------------------------------------------------------------------------- command line


@dataclass
class Options:
    corpus: str = DEFAULT_SOURCE  # fineweb-edu | ko | embedded | embedded-ko | a folder | a URL template with {index}
    num_shards: int | None = None  # training shards to fetch, from the first (None = all, 0 = only validation); alias -n
    workers: int = 4  # parallel downloads (and Arrow conversions)
    num_total_shards: int | None = None  # shards in a URL-template corpus (required there); the last one is validation
    name: str | None = None  # data dir of a folder / URL corpus: base_data_<name> (None = derived from the corpus)
    verify: bool = False  # re-hash shards already present instead of trusting their recorded size and mtime
    retries: int = 5  # extra attempts per file after a network error or a bad file
    max_chars: int | None = None  # embedded corpora: characters of training text to keep (None = all)
    shard_chars: int = SHARD_CHARS  # embedded corpora: characters of text per shard
    text_field: str | None = None  # JSON-lines corpora: the field holding each document (None = $NANOCHAT_TEXT_FIELD or text)

    def __post_init__(self):
        if self.num_shards is not None and self.num_shards < 0:
            raise ValueError(f"--num_shards must be >= 0 (or none for all), got {self.num_shards}")
        if self.workers < 1 or self.retries < 0:
            raise ValueError(f"--workers must be >= 1 and --retries >= 0, got {self.workers}, {self.retries}")
        if self.shard_chars < 1 or (self.max_chars is not None and self.max_chars < 1):
            raise ValueError(f"--shard_chars and --max_chars must be >= 1, got {self.shard_chars}, {self.max_chars}")


def main(opts: Options) -> list[Path]:
    if not get_dist_info().is_master:
        return []  # launched under torchrun: rank 0 alone fetches; see the module docstring
    print0(format_config(opts))
    src = resolve_source(opts.corpus, name=opts.name, num_total_shards=opts.num_total_shards)
    paths = download(src, opts.num_shards, workers=opts.workers, verify=opts.verify, retries=opts.retries,
                     max_chars=opts.max_chars, shard_chars=opts.shard_chars, text_field=opts.text_field)
    size = sum(p.stat().st_size for p in paths)
    print0(f"done: {len(paths) - 1} training shard(s) + validation {paths[-1].name} in {paths[-1].parent} "
           f"({size / 1e6:.1f} MB)")
    return paths


if __name__ == "__main__":
    run_main(main, parse_args(Options, prog="python -m nanochat.dataset", description=__doc__,
                              aliases={"-n": "num_shards", "-w": "workers"}),
             errors=(FileNotFoundError, ValueError, DownloadError))
