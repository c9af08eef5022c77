"""Verified, resumable downloads over HTTP(S) or from a local mirror.

download_file() streams one file into `<dest>.part`, resumes it with an HTTP Range request after
a cut, retries transient failures with backoff, checks size / sha256 / an optional validator, and
only then renames it to `<dest>`: a file at its final name is always complete and verified.
download_many() runs several downloads in a thread pool under one progress bar.

Limits, so a broken or hostile server can neither fill the disk nor hang a run:
- A body is never read past its size: past `expected_size` when one is given (the attempt fails
  as a bad file and is retried from scratch), else past `max_bytes`, default 4 GiB, or
  $NANOCHAT_DOWNLOAD_MAX_BYTES (the download fails at once; a Content-Length above it is refused
  before any byte is read).
- An attempt whose average speed stays under `low_speed_limit` bytes/s (default 1024, or
  $NANOCHAT_DOWNLOAD_LOW_SPEED_LIMIT; 0 turns it off) for `low_speed_time` seconds (default 60, or
  $NANOCHAT_DOWNLOAD_LOW_SPEED_TIME) is cut and retried like a dropped connection, resuming the
  `.part` (curl's --speed-limit / --speed-time). `timeout` still bounds each single read, so a
  silent connection is cut after `timeout` seconds however the speed limit is set.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHUNK_SIZE = 1 << 20  # largest read per call; read1 returns whatever has arrived, so slow links still report
MAX_BACKOFF = 60.0  # s, ceiling of the exponential backoff
RETRY_AFTER_CAP = 120.0  # s, longest Retry-After honoured, so one odd header cannot stall a run for hours
USER_AGENT = "nanochat-download/0.1"
MAX_BYTES = 4 << 30  # cap on a download of unknown size, far above what the pipeline fetches (~100 MB shards)
LOW_SPEED_LIMIT = 1024  # bytes/s: an attempt slower than this on average ...
LOW_SPEED_TIME = 60.0  # ... over this many seconds is cut and retried
MAX_BYTES_ENV = "NANOCHAT_DOWNLOAD_MAX_BYTES"
LOW_SPEED_LIMIT_ENV = "NANOCHAT_DOWNLOAD_LOW_SPEED_LIMIT"
LOW_SPEED_TIME_ENV = "NANOCHAT_DOWNLOAD_LOW_SPEED_TIME"

# Failures no retry can fix: fail at once and say what to check.
_FATAL_HINTS = {
    400: "the server rejected the request; check the URL",
    401: "authentication required (gated or private dataset?); check the URL and your access",
    403: "access denied (gated or private dataset?); check the URL and your access",
    404: "not found; check the source name, the URL template and the shard index",
    410: "gone from the server; check the source name and the shard index",
}
# Everything a flaky connection can raise while connecting or reading. URLError and the
# http.client errors (RemoteDisconnected, IncompleteRead) are OSError or HTTPException subclasses.
_NETWORK_ERRORS = (OSError, http.client.HTTPException)


class DownloadError(Exception):
    """A download failed for good. The message is one line: the source, what went wrong, what to do."""


class _Retry(Exception):
    """One attempt failed in a way worth another try. `bad_file`: the bytes are wrong, start over."""

    def __init__(self, message: str, *, retry_after: float | None = None, bad_file: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.bad_file = bad_file


@dataclass(frozen=True)
class _Checks:
    expected_size: int | None
    sha256: str | None
    validate: Callable[[Path], object] | None
    html_ok: bool  # the file itself is a web page, so an HTML body is not an error page


@dataclass(frozen=True)
class _Limits:
    max_bytes: int  # cap when expected_size is unknown
    low_speed_limit: float  # bytes/s; 0 = no speed check
    low_speed_time: float  # s, the window the average speed is measured over


def download_file(
    url: str | os.PathLike,
    dest_path: str | os.PathLike,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    validate: Callable[[Path], object] | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60,
    progress: Callable[[int, int | None], object] | tqdm | None = None,
    cancel: threading.Event | None = None,
    max_bytes: int | None = None,
    low_speed_limit: float | None = None,
    low_speed_time: float | None = None,
) -> Path:
    """Download `url` to `dest_path`, verified, resuming any `<dest>.part` left by an earlier try.

    url: http(s) URL, `file://` URL or plain local path (a local source is copied, then verified).
    expected_size / sha256: checked before the rename; sha256 is hex, computed while streaming.
    validate(path): called on the finished `.part`; returning False or raising DownloadError
        rejects the file (see validate_parquet).
    retries: extra attempts after the first for network errors, timeouts, HTTP 5xx/408/429 and
        files that fail verification (deleted and fetched from scratch). 401/403/404/410 fail at once.
    backoff: first retry delay in seconds, doubled per retry; a Retry-After header overrides it.
    timeout: seconds for connecting and for each read.
    progress: callable(bytes_done, bytes_total_or_None), or a tqdm bar fed with byte counts.
    cancel: an Event another thread may set to abandon the download; the `.part` stays for later.
    max_bytes: cap when expected_size is None (None: $NANOCHAT_DOWNLOAD_MAX_BYTES, else 4 GiB);
        going past it fails at once, leaving nothing.
    low_speed_limit / low_speed_time: an attempt averaging under low_speed_limit bytes/s over
        low_speed_time seconds is retried (None: their environment variables, else 1024 and 60;
        a limit of 0 turns the check off). See the module docstring.

    If `dest_path` already exists and passes the checks it is returned without any request
    (with sha256 given that means re-reading it); if it fails them it is deleted and downloaded
    again. Raises DownloadError; an exception other than DownloadError from `validate` propagates.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    dest = Path(dest_path)
    checks = _Checks(
        expected_size=expected_size,
        sha256=sha256.lower() if sha256 else None,
        validate=validate,
        html_ok=dest.suffix.lower() in (".html", ".htm"),
    )
    limits = _resolve_limits(max_bytes, low_speed_limit, low_speed_time)
    report = _as_reporter(progress)
    source = _local_source(url)
    if dest.exists():
        try:
            _verify(dest, checks)
        except _Retry:
            dest.unlink()  # a file at the final name must be a verified one
        else:
            size = dest.stat().st_size
            report(size, size)
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if source is not None:
        return _copy_local(source, dest, part, checks, limits, report, cancel)

    last: _Retry | None = None
    for attempt in range(retries + 1):
        if attempt:
            _sleep(_retry_delay(attempt, backoff, last.retry_after), url, cancel)
        try:
            hasher = _fetch(str(url), part, checks, limits, timeout, report, cancel)
            _verify(part, checks, hasher)
        except _Retry as e:
            last = e
            if e.bad_file:
                part.unlink(missing_ok=True)  # never resume from bytes known to be wrong
            continue
        os.replace(part, dest)  # atomic: the final name appears only now, complete
        return dest
    if last.bad_file:
        remedy = "the server keeps sending a bad file; check the URL and the expected size/checksum"
    else:
        remedy = "check the connection and rerun: the partial file is kept and resumed"
    raise DownloadError(f"{url}: failed after {retries + 1} attempts, last error: {last}; {remedy}")


def validate_parquet(path: str | os.PathLike, min_rows: int = 1, columns: Iterable[str] = ("text",)) -> int:
    """Check that `path` is a readable parquet file with >= min_rows rows and the given columns.

    Reads only the footer (metadata), so it is cheap on 100 MB shards; it catches truncated files
    and wrong content, not bytes flipped inside a data page (use sha256 for that).
    Returns the row count; raises DownloadError on a bad file.
    """
    import pyarrow as pa  # imported here: pyarrow is slow to import and most callers never validate
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as pf:
            rows = pf.metadata.num_rows
            names = set(pf.schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError) as e:
        reason = str(e).replace("\n", " ")
        raise DownloadError(f"{path}: not a readable parquet file ({reason}); delete it and download again") from e
    missing = [c for c in columns if c not in names]
    if missing:
        raise DownloadError(f"{path}: parquet file lacks column(s) {missing} (has {sorted(names)}); wrong source?")
    if rows < min_rows:
        raise DownloadError(f"{path}: parquet file has {rows} rows, expected at least {min_rows}; wrong source?")
    return rows


def download_many(jobs: Iterable[tuple], *, workers: int = 4, desc: str = "download") -> list[Path]:
    """Run download_file for each job (url, dest) or (url, dest, kwargs) in parallel threads.

    One progress bar counts bytes over all files, with files done in its postfix. Returns the
    destination paths in job order. On the first failure the jobs not yet started are cancelled,
    the running ones finish, then DownloadError names the failed URL. On Ctrl-C the running
    downloads stop at their next read and leave only `.part` files, which a rerun resumes.
    """
    jobs = [(job[0], job[1], dict(job[2]) if len(job) > 2 else {}) for job in jobs]
    if not jobs:
        return []
    lock = threading.Lock()
    done = [0] * len(jobs)
    totals = [kwargs.get("expected_size") for _, _, kwargs in jobs]
    bar = tqdm(total=sum(t for t in totals if t) or None, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)

    def reporter(i: int) -> Callable[[int, int | None], None]:
        def report(n: int, total: int | None) -> None:
            with lock:  # workers report concurrently; the bar and the lists are shared
                if total is not None and totals[i] != total:
                    totals[i] = total
                    bar.total = sum(t for t in totals if t)
                bar.update(n - done[i])
                done[i] = n
        return report

    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download")
    results: list[Path | None] = [None] * len(jobs)
    first: DownloadError | None = None
    failed = not_started = 0
    try:
        futures = {
            pool.submit(download_file, url, dest, **{**kwargs, "progress": reporter(i), "cancel": cancel}): i
            for i, (url, dest, kwargs) in enumerate(jobs)
        }
        for future in as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()
            except CancelledError:
                not_started += 1
                continue
            except Exception as e:  # a disk error or a bug in a validator counts as this URL's failure
                failed += 1
                if first is None:
                    first = e if isinstance(e, DownloadError) else DownloadError(f"{jobs[i][0]}: {e!r}")
                    if first is not e:
                        first.__cause__ = e  # keep the original traceback in the chain
                    for f in futures:
                        f.cancel()  # only stops jobs that have not started
                continue
            with lock:
                bar.set_postfix_str(f"{sum(r is not None for r in results)}/{len(jobs)} files")
    except BaseException:
        # Ctrl-C (or any error in this thread): workers stop at their next read, .part files stay
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        raise
    pool.shutdown()
    bar.close()
    if first is not None:
        extra = f" ({failed - 1} more failed, {not_started} not started; rerun to resume)"
        raise DownloadError(f"{first}{extra if failed > 1 or not_started else ''}") from first
    return results


# ----------------------------------------------------------------------------- internals


def _fetch(url: str, part: Path, checks: _Checks, limits: _Limits, timeout: float, report, cancel):
    """One attempt: append the rest of the file to `part`. Returns the running sha256 (or None)."""
    for _ in range(2):  # the second pass only after throwing away a part the server cannot continue
        have = part.stat().st_size if part.exists() else 0
        if checks.expected_size is not None and have >= checks.expected_size:
            if have == checks.expected_size:
                return _hash_prefix(part, have, checks)  # complete already: nothing to request
            part.unlink()
            have = 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}  # bytes on disk = bytes sent
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            with e:
                if e.code == 416 and have:
                    # the range starts at or past the end: the part is complete, or longer than the file
                    total = _range_total(e.headers.get("Content-Range"))
                    if total == have:
                        return _hash_prefix(part, have, checks)
                    part.unlink()
                    continue
                raise _http_failure(url, e) from None
        except _NETWORK_ERRORS as e:
            raise _Retry(f"cannot connect: {_reason(e)}") from None
        with resp:
            if resp.status == 206:
                start, total = _parse_content_range(resp.headers.get("Content-Range"))
                if start != have:  # not the range asked for: cannot splice it on
                    part.unlink()
                    continue
            elif resp.status == 200:
                have = 0  # no Range sent, or the server ignored it: the body is the whole file
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            else:
                raise _Retry(f"unexpected HTTP {resp.status} {resp.reason}")
            if resp.headers.get_content_type() == "text/html" and not checks.html_ok:
                raise _Retry("server sent an HTML page instead of the file (error or login page?)", bad_file=True)
            if checks.expected_size is not None and total is not None and total != checks.expected_size:
                raise _Retry(f"server reports {total} bytes, expected {checks.expected_size}", bad_file=True)
            if checks.expected_size is None and total is not None and total > limits.max_bytes:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url}: server reports {total} bytes, over the {limits.max_bytes}-byte cap "
                                    f"for files of unknown size; {_CAP_REMEDY}")
            return _stream(url, resp, part, have, total, checks, limits, report, cancel)
    raise _Retry("server cannot continue the partial file; restarting")


def _stream(url: str, resp, part: Path, have: int, total: int | None, checks: _Checks, limits: _Limits,
            report, cancel):
    hasher = _hash_prefix(part, have, checks)  # continue the digest over the bytes already on disk
    limit = checks.expected_size if checks.expected_size is not None else limits.max_bytes
    speed = _SpeedCheck(limits, have)
    done, over = have, False
    report(done, total)
    with open(part, "ab" if have else "wb") as f:
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadError(f"{url}: cancelled; rerun to resume from {part.name}")
            try:
                # at the limit, one byte more is asked for: a body that goes on past it shows itself
                chunk = resp.read1(min(CHUNK_SIZE, max(limit - done, 0)) or 1)
            except _NETWORK_ERRORS as e:
                raise _Retry(f"connection lost after {done} bytes: {_reason(e)}") from None
            if not chunk:
                break
            if done + len(chunk) > limit:
                over = True  # nothing past the limit is written
                break
            f.write(chunk)  # a disk error here is not a network error: it propagates, no retry
            if hasher is not None:
                hasher.update(chunk)
            done += len(chunk)
            report(done, total)
            speed.check(done)
    if over and checks.expected_size is not None:
        raise _Retry(f"server sent more than the expected {limit} bytes", bad_file=True)
    if over:  # the same server would do it again: no retries, and nothing kept to resume from
        part.unlink()
        raise DownloadError(f"{url}: server sent more than {limit} bytes for a file of unknown size; {_CAP_REMEDY}")
    if total is not None and done != total:
        raise _Retry(f"connection closed after {done} of {total} bytes")
    return hasher


_CAP_REMEDY = (f"check the URL, or if the file really is that big pass expected_size / max_bytes "
               f"or raise ${MAX_BYTES_ENV}")


class _SpeedCheck:
    """curl's --speed-limit/--speed-time: fail when the average over a window falls below the limit."""

    def __init__(self, limits: _Limits, done: int):
        self.limits = limits
        self.start, self.start_bytes = time.monotonic(), done

    def check(self, done: int) -> None:
        if not self.limits.low_speed_limit:
            return
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.limits.low_speed_time:
            return
        rate = (done - self.start_bytes) / elapsed
        if rate < self.limits.low_speed_limit:
            raise _Retry(f"too slow: {rate:.0f} bytes/s over {elapsed:.1f} s after {done} bytes, under the "
                         f"low-speed limit of {self.limits.low_speed_limit:g} bytes/s (${LOW_SPEED_LIMIT_ENV})")
        self.start, self.start_bytes = now, done


def _copy_local(src: Path, dest: Path, part: Path, checks: _Checks, limits: _Limits, report, cancel) -> Path:
    if not src.is_file():
        raise DownloadError(f"{src}: local source not found; check the path or the mirror directory")
    total = src.stat().st_size
    # refused before copying, as the same bytes would be after
    if checks.expected_size is not None and total != checks.expected_size:
        raise DownloadError(f"{src}: local file failed verification: size is {total} bytes, expected "
                            f"{checks.expected_size}; replace the mirror copy")
    if checks.expected_size is None and total > limits.max_bytes:
        raise DownloadError(f"{src}: local file has {total} bytes, over the {limits.max_bytes}-byte cap for files "
                            f"of unknown size; {_CAP_REMEDY}")
    hasher = hashlib.sha256() if checks.sha256 else None
    done = 0
    with open(src, "rb") as fin, open(part, "wb") as fout:
        while chunk := fin.read(CHUNK_SIZE):
            if cancel is not None and cancel.is_set():
                raise DownloadError(f"{src}: cancelled; rerun to copy it again")
            fout.write(chunk)
            if hasher is not None:
                hasher.update(chunk)
            done += len(chunk)
            report(done, total)
    try:
        _verify(part, checks, hasher)
    except _Retry as e:
        part.unlink()
        # the same local bytes would fail again: no retries
        raise DownloadError(f"{src}: local file failed verification: {e}; replace the mirror copy") from None
    os.replace(part, dest)
    return dest


def _verify(path: Path, checks: _Checks, hasher=None) -> None:
    """Raise _Retry(bad_file=True) unless `path` passes every check that was asked for."""
    size = path.stat().st_size
    if checks.expected_size is not None and size != checks.expected_size:
        raise _Retry(f"size is {size} bytes, expected {checks.expected_size}", bad_file=True)
    if not checks.html_ok and _looks_like_html(path):
        raise _Retry("got an HTML page instead of the file (error or login page?)", bad_file=True)
    if checks.sha256:
        digest = (hasher if hasher is not None else _hash_prefix(path, size, checks)).hexdigest()
        if digest != checks.sha256:
            raise _Retry(f"sha256 mismatch: got {digest}, expected {checks.sha256}", bad_file=True)
    if checks.validate is not None:
        try:
            ok = checks.validate(path)
        except DownloadError as e:
            raise _Retry(f"validation failed: {e}", bad_file=True) from None
        if ok is False:  # `is`: a validator may return a count, and 0 rows can be legitimate
            raise _Retry(f"validation failed: {getattr(checks.validate, '__name__', 'validate')} returned False",
                         bad_file=True)


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _hash_prefix(path: Path, n: int, checks: _Checks):
    """sha256 of the first n bytes of `path`, or None when no checksum was asked for."""
    if not checks.sha256:
        return None
    hasher = hashlib.sha256()
    if n:
        with open(path, "rb") as f:
            while n > 0 and (chunk := f.read(min(CHUNK_SIZE, n))):
                hasher.update(chunk)
                n -= len(chunk)
    return hasher


def _local_source(url: str | os.PathLike) -> Path | None:
    """The local path behind a file:// URL or plain path; None for http(s)."""
    if isinstance(url, os.PathLike):
        return Path(url)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:  # urllib would report this as a network error and retry it
            raise DownloadError(f"{url}: no host in the URL; check the URL template")
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path; one letter is a Windows drive
        return Path(url)
    raise DownloadError(f"{url}: unsupported URL scheme {parsed.scheme!r}; use http(s)://, file:// or a local path")


def _http_failure(url: str, e: urllib.error.HTTPError) -> Exception:
    if e.code in (408, 429) or e.code >= 500:
        return _Retry(f"HTTP {e.code} {e.reason}", retry_after=_parse_retry_after(e.headers.get("Retry-After")))
    hint = _FATAL_HINTS.get(e.code, "the server refused the request; check the URL")
    return DownloadError(f"{url}: HTTP {e.code} {e.reason}; {hint}")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes START-END/TOTAL' -> (START, TOTAL); TOTAL may be '*' (unknown)."""
    try:
        unit, spec = value.split(" ", 1)
        span, total = spec.split("/", 1)
        start = int(span.split("-", 1)[0])
        return (start if unit == "bytes" else None), (None if total.strip() == "*" else int(total))
    except (AttributeError, ValueError):
        return None, None


def _range_total(value: str | None) -> int | None:
    """The TOTAL of a 416 answer's 'bytes */TOTAL'."""
    try:
        return int(value.rsplit("/", 1)[1])
    except (AttributeError, IndexError, ValueError):
        return None


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _retry_delay(attempt: int, backoff: float, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, RETRY_AFTER_CAP)
    delay = min(backoff * 2 ** (attempt - 1), MAX_BACKOFF)
    return delay * random.uniform(1.0, 1.25)  # jitter, so parallel workers hit by one outage spread out


def _sleep(seconds: float, url, cancel: threading.Event | None) -> None:
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise DownloadError(f"{url}: cancelled; rerun to resume")


def _resolve_limits(max_bytes: int | None, low_speed_limit: float | None, low_speed_time: float | None) -> _Limits:
    """Arguments win, then the environment, then the defaults; read per call so a run can set them."""
    limits = _Limits(
        max_bytes=int(_setting(max_bytes, MAX_BYTES_ENV, MAX_BYTES, int)),
        low_speed_limit=_setting(low_speed_limit, LOW_SPEED_LIMIT_ENV, LOW_SPEED_LIMIT, float),
        low_speed_time=_setting(low_speed_time, LOW_SPEED_TIME_ENV, LOW_SPEED_TIME, float),
    )
    if limits.max_bytes <= 0:
        raise ValueError(f"max_bytes (or ${MAX_BYTES_ENV}) must be > 0, got {limits.max_bytes}")
    if limits.low_speed_limit < 0:
        raise ValueError(f"low_speed_limit (or ${LOW_SPEED_LIMIT_ENV}) must be >= 0 (0 = off), got {limits.low_speed_limit}")
    if limits.low_speed_time <= 0:
        raise ValueError(f"low_speed_time (or ${LOW_SPEED_TIME_ENV}) must be > 0 seconds, got {limits.low_speed_time}")
    return limits


def _setting(value, env: str, default, kind):
    if value is not None:
        return value
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"${env}={raw!r} is not a number; unset it or give e.g. {default}") from None


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)  # URLError wraps the socket error in .reason
    return repr(reason if reason is not None else e)


def _as_reporter(progress) -> Callable[[int, int | None], object]:
    if progress is None:
        return lambda done, total: None
    if not hasattr(progress, "update"):
        return progress
    bar, last = progress, [0]

    def report(done: int, total: int | None) -> None:  # a tqdm bar counts deltas; a restart gives one < 0
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - last[0])
        last[0] = done

    return report
