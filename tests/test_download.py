"""Tests for nanochat.download against a real HTTP server on 127.0.0.1 whose answers each test scripts.

Every test goes through the real download_file / download_many over a socket: cuts, ignored
ranges, 404s, 5xx and 429 bursts, corrupt and HTML bodies, endless bodies, slow and trickling
streams, and Ctrl-C.
"""

import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tqdm import tqdm

from nanochat import download as dl
from nanochat.download import DownloadError, download_file, download_many, validate_parquet
from tests.http_server import start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
FAST = dict(backoff=0.01, timeout=5)  # tiny backoff keeps retry tests fast


def make_parquet(rows: int = 400, seed: int = 0) -> bytes:
    """A real shard: one `text` column, several row groups, ~100 kB so a cut lands mid-file."""
    texts = [f"doc {seed}-{i}: " + " ".join(f"w{(i * 7 + j * seed) % 997}" for j in range(40)) for i in range(rows)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=100, compression="none")
    return buf.getvalue()


PARQUET = make_parquet()
SHA = hashlib.sha256(PARQUET).hexdigest()


class Server:
    """Serves `files[path]`; each request to a path pops the next scripted action, then plain 'ok'."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.closed = threading.Event()  # ends endless bodies whose client never hangs up
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with server.lock:
                    server.requests.append((path, self.headers.get("Range")))
                    action = server.scripts[path].popleft() if server.scripts[path] else ("ok",)
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    self.act(path, *action)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (cancel tests)
                finally:
                    with server.lock:
                        server.inflight -= 1

            def act(self, path, kind, *args):
                data = server.files.get(path)
                if kind == "ok":
                    self.send_body(data)
                elif kind == "cut":  # full Content-Length, then the connection closes after n bytes
                    self.send_body(data, limit=args[0])
                elif kind == "norange":
                    self.send_body(data, honour_range=False)
                elif kind == "body":  # another body, e.g. corrupt bytes of a plausible length
                    self.send_body(args[0])
                elif kind == "status":
                    code, headers = args[0], (args[1] if len(args) > 1 else {})
                    self.send_response(code)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    page = f"<html><body>error {code}</body></html>".encode()
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                elif kind == "html":  # 200 with an error page; args[0] picks the declared type
                    page = b"<!DOCTYPE html>\n<html><body>Rate limited, please log in</body></html>"
                    self.send_body(page, ctype=args[0] if args else "text/html", honour_range=False)
                elif kind == "slow":  # stream in small pieces with pauses
                    self.send_body(data, piece=args[0], delay=args[1])
                elif kind == "stall":  # send half, then go silent longer than the client's timeout
                    self.send_body(data, limit=len(data) // 2, stall=args[0])
                elif kind == "endless":  # `data`, then zeros until the client leaves; args[0]: Content-Length
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    if args[0] is not None:  # None: no length, the body would end when the connection closes
                        self.send_header("Content-Length", str(args[0]))
                    self.end_headers()
                    self.wfile.write(data)
                    junk = bytes(1 << 16)
                    while not server.closed.is_set():
                        self.wfile.write(junk)
                elif kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", args[0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    raise AssertionError(kind)

            def send_body(self, data, *, honour_range=True, limit=None, ctype="application/octet-stream",
                          piece=None, delay=0.0, stall=0.0):
                rng = self.headers.get("Range")
                start = 0
                if rng and honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                payload = data[start:]
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if limit is not None:
                    payload = payload[:limit]
                step = piece or len(payload) or 1
                for i in range(0, len(payload), step):
                    self.wfile.write(payload[i:i + step])
                    self.wfile.flush()
                    time.sleep(delay)
                time.sleep(stall)
                # HTTP/1.0: returning closes the connection, short of Content-Length when limited

            def log_message(self, *args):
                pass

        self.httpd, self.base = start_server(Handler)

    def add(self, path: str, data: bytes = PARQUET, *script) -> str:
        self.files[path] = data
        self.scripts[path].extend(script)
        return self.base + path

    def hits(self, path: str) -> list[str | None]:
        """The Range header of each request made to `path`."""
        return [rng for p, rng in self.requests if p == path]

    def close(self):
        self.closed.set()
        stop_server(self.httpd)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ----------------------------------------------------------------------------- download_file


def test_plain_download_with_all_checks(server, tmp_path):
    url = server.add("/a.parquet")
    seen = []
    out = download_file(url, tmp_path / "a.parquet", expected_size=len(PARQUET), sha256=SHA,
                        validate=validate_parquet, progress=lambda d, t: seen.append((d, t)), **FAST)
    assert out == tmp_path / "a.parquet" and out.read_bytes() == PARQUET
    assert leftovers(tmp_path) == ["a.parquet"]
    assert seen[-1] == (len(PARQUET), len(PARQUET))
    assert server.hits("/a.parquet") == [None]


def test_resume_after_cut_sends_range_and_hash_continues(server, tmp_path):
    cut = len(PARQUET) // 3
    url = server.add("/a.parquet", PARQUET, ("cut", cut))
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, retries=2, **FAST)
    assert out.read_bytes() == PARQUET
    assert server.hits("/a.parquet") == [None, f"bytes={cut}-"]
    assert leftovers(tmp_path) == ["a.parquet"]


def test_resume_part_left_by_earlier_process_rehashes_prefix(server, tmp_path):
    n = 12345
    (tmp_path / "a.parquet.part").write_bytes(PARQUET[:n])
    url = server.add("/a.parquet")
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, expected_size=len(PARQUET), **FAST)
    assert out.read_bytes() == PARQUET
    assert server.hits("/a.parquet") == [f"bytes={n}-"]  # one request, for the missing tail only


def test_cut_twice_then_tqdm_progress_reaches_total(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, ("cut", 1000), ("cut", 20000))
    with tqdm(file=io.StringIO()) as bar:
        download_file(url, tmp_path / "a.parquet", progress=bar, retries=3, **FAST)
        assert bar.n == bar.total == len(PARQUET)
    assert server.hits("/a.parquet") == [None, "bytes=1000-", "bytes=21000-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    (tmp_path / "a.parquet.part").write_bytes(PARQUET[:5000])
    url = server.add("/a.parquet", PARQUET, ("norange",))
    out = download_file(url, tmp_path / "a.parquet", **FAST)
    assert out.read_bytes() == PARQUET  # not the prefix twice
    assert server.hits("/a.parquet") == ["bytes=5000-"]


def test_416_with_complete_part_verifies_without_body(server, tmp_path):
    (tmp_path / "a.parquet.part").write_bytes(PARQUET)
    url = server.add("/a.parquet")
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, **FAST)
    assert out.read_bytes() == PARQUET
    assert server.hits("/a.parquet") == [f"bytes={len(PARQUET)}-"]


def test_416_with_part_longer_than_file_restarts(server, tmp_path):
    (tmp_path / "a.parquet.part").write_bytes(PARQUET + b"junk")
    url = server.add("/a.parquet")
    out = download_file(url, tmp_path / "a.parquet", **FAST)
    assert out.read_bytes() == PARQUET
    assert server.hits("/a.parquet") == [f"bytes={len(PARQUET) + 4}-", None]


def test_part_of_expected_size_needs_no_request(server, tmp_path):
    (tmp_path / "a.parquet.part").write_bytes(PARQUET)
    url = server.add("/a.parquet")
    download_file(url, tmp_path / "a.parquet", expected_size=len(PARQUET), sha256=SHA, **FAST)
    assert server.hits("/a.parquet") == []


def test_5xx_retried_then_succeeds(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, ("status", 500), ("status", 503), ("status", 502))
    out = download_file(url, tmp_path / "a.parquet", retries=3, **FAST)
    assert out.read_bytes() == PARQUET
    assert len(server.hits("/a.parquet")) == 4


def test_retries_exhausted_fails_with_one_line(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, *[("status", 500)] * 10)
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.parquet", retries=2, **FAST)
    msg = str(e.value)
    assert url in msg and "500" in msg and "3 attempts" in msg and "\n" not in msg
    assert len(server.hits("/a.parquet")) == 3
    assert not (tmp_path / "a.parquet").exists()


@pytest.mark.parametrize("code", [401, 403, 404])
def test_client_errors_fail_at_once(server, tmp_path, code):
    url = server.add("/shard_00042.parquet", PARQUET, ("status", code))
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "x.parquet", retries=5, backoff=10)  # a retry would take 10 s
    msg = str(e.value)
    assert time.monotonic() - t0 < 5
    assert url in msg and str(code) in msg and "check" in msg and "\n" not in msg
    if code == 404:
        assert "shard index" in msg
    assert len(server.hits("/shard_00042.parquet")) == 1
    assert leftovers(tmp_path) == []


def test_429_retry_after_is_respected(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, ("status", 429, {"Retry-After": "1"}))
    t0 = time.monotonic()
    download_file(url, tmp_path / "a.parquet", **FAST)
    assert time.monotonic() - t0 >= 0.9  # backoff alone would have waited ~0.01 s
    assert len(server.hits("/a.parquet")) == 2


def test_retry_after_is_capped(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "RETRY_AFTER_CAP", 0.05)
    url = server.add("/a.parquet", PARQUET, ("status", 503, {"Retry-After": "3600"}))
    t0 = time.monotonic()
    download_file(url, tmp_path / "a.parquet", **FAST)
    assert time.monotonic() - t0 < 5


def test_stalled_connection_times_out_and_resumes(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, ("stall", 3.0))
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, backoff=0.01, timeout=0.5)
    assert out.read_bytes() == PARQUET
    hits = server.hits("/a.parquet")
    assert hits[0] is None and hits[1] == f"bytes={len(PARQUET) // 2}-"


def test_endless_body_is_cut_at_the_expected_size(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, *[("endless", None)] * 3)  # the right bytes, then more, forever
    seen = []
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.parquet", expected_size=len(PARQUET), retries=2,
                      progress=lambda done, total: seen.append(done), **FAST)
    msg = str(e.value)
    assert f"more than the expected {len(PARQUET)} bytes" in msg and "3 attempts" in msg and "\n" not in msg
    assert max(seen) == len(PARQUET)  # progress follows each write: nothing past the size reached the disk
    assert leftovers(tmp_path) == []  # a bad file: not kept to resume from, never at the final name
    assert len(server.hits("/a.parquet")) == 3
    assert time.monotonic() - t0 < 10


def test_endless_body_of_unknown_size_stops_at_the_cap_at_once(server, tmp_path, monkeypatch):
    cap = 256 * 1024
    url = server.add("/a.bin", PARQUET, ("endless", None), ("endless", None))
    seen = []
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.bin", max_bytes=cap, progress=lambda done, total: seen.append(done), **FAST)
    msg = str(e.value)
    assert f"more than {cap} bytes" in msg and dl.MAX_BYTES_ENV in msg and "\n" not in msg
    assert max(seen) <= cap and leftovers(tmp_path) == []
    assert len(server.hits("/a.bin")) == 1  # the same server would do it again: no retries
    monkeypatch.setenv(dl.MAX_BYTES_ENV, str(cap))  # the environment sets the same cap
    with pytest.raises(DownloadError, match=f"more than {cap} bytes"):
        download_file(url, tmp_path / "a.bin", **FAST)
    assert leftovers(tmp_path) == []


def test_declared_length_over_the_default_cap_is_refused_before_reading(server, tmp_path):
    url = server.add("/a.bin", PARQUET, ("endless", 10 << 30))
    seen = []
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.bin", progress=lambda done, total: seen.append(done), **FAST)
    assert f"server reports {10 << 30} bytes, over the {4 << 30}-byte cap" in str(e.value)
    assert seen == [] and leftovers(tmp_path) == [] and len(server.hits("/a.bin")) == 1


def test_body_running_past_its_content_length_is_read_to_the_length_only(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, ("endless", len(PARQUET)))
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, **FAST)
    assert out.read_bytes() == PARQUET
    assert len(server.hits("/a.parquet")) == 1


def test_trickling_server_is_cut_by_the_low_speed_limit_retried_then_fails(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, *[("slow", 1, 0.1)] * 3)  # 10 bytes/s, never silent for `timeout`
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.parquet", retries=2, low_speed_limit=1000, low_speed_time=0.5, **FAST)
    msg = str(e.value)
    assert "too slow" in msg and "3 attempts" in msg and "rerun" in msg and "\n" not in msg
    assert time.monotonic() - t0 < 10
    hits = server.hits("/a.parquet")
    assert len(hits) == 3 and hits[0] is None
    assert all(h is not None and h != "bytes=0-" for h in hits[1:])  # each retry resumed the part
    assert leftovers(tmp_path) == ["a.parquet.part"]  # kept for a rerun, never at the final name
    assert 0 < (tmp_path / "a.parquet.part").stat().st_size < len(PARQUET)


def test_slow_attempt_then_good_one_resumes_to_a_verified_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv(dl.LOW_SPEED_LIMIT_ENV, "1000")  # the environment's limits, as a run would set them
    monkeypatch.setenv(dl.LOW_SPEED_TIME_ENV, "0.5")
    url = server.add("/a.parquet", PARQUET, ("slow", 1, 0.1))
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, expected_size=len(PARQUET), **FAST)
    assert out.read_bytes() == PARQUET
    hits = server.hits("/a.parquet")
    assert len(hits) == 2 and hits[0] is None and hits[1] not in (None, "bytes=0-")
    assert leftovers(tmp_path) == ["a.parquet"]


@pytest.mark.parametrize("env, value", [(dl.MAX_BYTES_ENV, "4GB"), (dl.LOW_SPEED_TIME_ENV, "0"),
                                        (dl.LOW_SPEED_LIMIT_ENV, "-1")])
def test_bad_limit_setting_is_a_one_line_error_before_any_request(server, tmp_path, monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=env) as e:
        download_file(server.add("/a.parquet"), tmp_path / "a.parquet", **FAST)
    assert "\n" not in str(e.value)
    assert server.requests == []


def test_connection_refused_retried_then_clear_failure(tmp_path):
    s = Server()
    url = s.base + "/a.parquet"
    s.close()  # nothing listens on that port any more
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.parquet", retries=2, **FAST)
    assert url in str(e.value) and "3 attempts" in str(e.value) and "rerun" in str(e.value)


def test_redirect_is_followed_and_keeps_range(server, tmp_path):
    server.add("/cdn/a.parquet")
    url = server.add("/resolve/a.parquet", b"", ("redirect", "/cdn/a.parquet"), ("redirect", "/cdn/a.parquet"))
    server.scripts["/cdn/a.parquet"].append(("cut", 7000))
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, **FAST)
    assert out.read_bytes() == PARQUET
    assert server.hits("/cdn/a.parquet") == [None, "bytes=7000-"]


def test_corrupt_body_detected_by_sha_and_refetched_from_scratch(server, tmp_path):
    bad = bytearray(PARQUET)
    bad[len(bad) // 2] ^= 0xFF  # one flipped byte, same length: only the checksum can tell
    url = server.add("/a.parquet", PARQUET, ("body", bytes(bad)))
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, expected_size=len(PARQUET), **FAST)
    assert out.read_bytes() == PARQUET
    assert server.hits("/a.parquet") == [None, None]  # the bad bytes were not resumed from


def test_sha256_mismatch_fails_and_leaves_nothing(server, tmp_path):
    url = server.add("/a.parquet")
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.parquet", sha256="0" * 64, retries=1, **FAST)
    msg = str(e.value)
    assert "sha256 mismatch" in msg and url in msg and "bad file" in msg and "\n" not in msg
    assert leftovers(tmp_path) == []
    assert server.hits("/a.parquet") == [None, None]


def test_truncated_parquet_with_right_length_caught_by_validate(server, tmp_path):
    bad = PARQUET[:-300] + b"\0" * 300  # the footer is gone, the length still looks right
    url = server.add("/a.parquet", PARQUET, ("body", bad))
    out = download_file(url, tmp_path / "a.parquet", expected_size=len(PARQUET), validate=validate_parquet, **FAST)
    assert out.read_bytes() == PARQUET
    assert len(server.hits("/a.parquet")) == 2


def test_always_corrupt_is_a_clear_failure_never_at_final_path(server, tmp_path):
    url = server.add("/a.parquet", PARQUET[: len(PARQUET) // 2])  # the server's copy itself is cut short
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.parquet", validate=validate_parquet, retries=2, **FAST)
    assert "not a readable parquet file" in str(e.value) and "\n" not in str(e.value)
    assert leftovers(tmp_path) == []


def test_expected_size_mismatch_is_detected(server, tmp_path):
    url = server.add("/a.parquet")
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.parquet", expected_size=len(PARQUET) + 1, retries=1, **FAST)
    assert f"expected {len(PARQUET) + 1}" in str(e.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ctype", ["text/html", "application/octet-stream"])
def test_html_error_page_rejected_then_refetched(server, tmp_path, ctype):
    url = server.add("/a.parquet", PARQUET, ("html", ctype))
    out = download_file(url, tmp_path / "a.parquet", **FAST)  # no checks asked for: HTML is still caught
    assert out.read_bytes() == PARQUET
    assert len(server.hits("/a.parquet")) == 2


def test_html_page_every_time_fails_clearly(server, tmp_path):
    url = server.add("/a.parquet", PARQUET, *[("html",)] * 5)
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "a.parquet", retries=2, **FAST)
    assert "HTML page" in str(e.value)
    assert leftovers(tmp_path) == []


def test_html_file_may_be_html(server, tmp_path):
    page = b"<!DOCTYPE html><html><body>the UI</body></html>"
    url = server.add("/ui.html", page)
    assert download_file(url, tmp_path / "ui.html", **FAST).read_bytes() == page


def test_existing_verified_file_is_skipped_without_request(server, tmp_path):
    (tmp_path / "a.parquet").write_bytes(PARQUET)
    url = server.add("/a.parquet")
    seen = []
    out = download_file(url, tmp_path / "a.parquet", sha256=SHA, validate=validate_parquet,
                        progress=lambda d, t: seen.append((d, t)), **FAST)
    assert out == tmp_path / "a.parquet"
    assert server.requests == []
    assert seen == [(len(PARQUET), len(PARQUET))]


def test_existing_bad_file_is_replaced(server, tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"not parquet at all")
    url = server.add("/a.parquet")
    out = download_file(url, tmp_path / "a.parquet", validate=validate_parquet, **FAST)
    assert out.read_bytes() == PARQUET
    assert len(server.hits("/a.parquet")) == 1


def test_local_path_and_file_url_sources(tmp_path):
    src = tmp_path / "mirror dir" / "a.parquet"
    src.parent.mkdir()
    src.write_bytes(PARQUET)
    out1 = download_file(str(src), tmp_path / "out" / "a.parquet", sha256=SHA, validate=validate_parquet)
    out2 = download_file(src.as_uri(), tmp_path / "out" / "b.parquet", sha256=SHA)
    assert out1.read_bytes() == PARQUET and out2.read_bytes() == PARQUET
    assert leftovers(tmp_path / "out") == ["a.parquet", "b.parquet"]

    with pytest.raises(DownloadError, match="local file failed verification"):
        download_file(src, tmp_path / "out" / "c.parquet", sha256="f" * 64)
    with pytest.raises(DownloadError, match="local source not found"):
        download_file(tmp_path / "nope.parquet", tmp_path / "out" / "d.parquet")
    with pytest.raises(DownloadError, match="over the 1000-byte cap"):  # refused before any copying
        download_file(src, tmp_path / "out" / "e.parquet", max_bytes=1000)
    with pytest.raises(DownloadError, match="size is .* expected 1000"):
        download_file(src, tmp_path / "out" / "f.parquet", expected_size=1000)
    assert leftovers(tmp_path / "out") == ["a.parquet", "b.parquet"]


def test_unsupported_scheme_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        download_file("ftp://example.com/a.parquet", tmp_path / "a.parquet")


# ----------------------------------------------------------------------------- validate_parquet


def test_validate_parquet(tmp_path):
    good = tmp_path / "good.parquet"
    good.write_bytes(PARQUET)
    assert validate_parquet(good) == 400
    with pytest.raises(DownloadError, match="expected at least 1000"):
        validate_parquet(good, min_rows=1000)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"body": ["x"]}), other)
    with pytest.raises(DownloadError, match="lacks column"):
        validate_parquet(other)
    assert validate_parquet(other, columns=["body"]) == 1
    for name, data in [("cut.parquet", PARQUET[:-10]), ("empty.parquet", b""), ("page.parquet", b"<html>")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DownloadError, match="not a readable parquet file"):
            validate_parquet(tmp_path / name)


# ----------------------------------------------------------------------------- download_many


def test_download_many_parallel(server, tmp_path):
    shards = [make_parquet(rows=50, seed=s) for s in range(6)]
    jobs = []
    for i, data in enumerate(shards):
        url = server.add(f"/s{i}.parquet", data, ("slow", 4096, 0.01))
        kwargs = {"sha256": hashlib.sha256(data).hexdigest(), "validate": validate_parquet, **FAST}
        jobs.append((url, tmp_path / f"s{i}.parquet", kwargs))
    out = download_many(jobs, workers=3, desc="test")
    assert out == [tmp_path / f"s{i}.parquet" for i in range(6)]
    assert [p.read_bytes() for p in out] == shards
    assert server.max_inflight >= 2  # really ran side by side
    assert leftovers(tmp_path) == sorted(f"s{i}.parquet" for i in range(6))

    n = len(server.requests)
    assert download_many(jobs, workers=3) == out  # a rerun skips everything
    assert len(server.requests) == n


def test_download_many_reports_failing_url(server, tmp_path):
    jobs = [(server.add(f"/s{i}.parquet"), tmp_path / f"s{i}.parquet", FAST) for i in range(3)]
    bad = server.add("/missing.parquet", PARQUET, ("status", 404))
    jobs.insert(1, (bad, tmp_path / "missing.parquet", FAST))
    jobs.append((server.add("/s3.parquet"), tmp_path / "s3.parquet"))  # a 2-tuple job is fine too
    with pytest.raises(DownloadError) as e:
        download_many(jobs, workers=2)
    assert bad in str(e.value) and "404" in str(e.value) and "\n" not in str(e.value)
    # whatever finished is complete and verified; nothing half-written sits at a final name
    for p in tmp_path.iterdir():
        assert p.name != "missing.parquet" and p.read_bytes() == PARQUET


def test_download_many_empty():
    assert download_many([]) == []


_CTRL_C_CHILD = """
import sys
from nanochat.download import download_many
base, out = sys.argv[1], sys.argv[2]
jobs = [(f"{base}/s{i}.parquet", f"{out}/s{i}.parquet", {"backoff": 0.01}) for i in range(3)]
download_many(jobs, workers=3)
"""


def test_ctrl_c_leaves_only_part_files_and_rerun_resumes(server, tmp_path):
    for i in range(3):
        server.add(f"/s{i}.parquet", PARQUET, ("slow", 2048, 0.02))  # ~2.5 s per file if left alone
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _CTRL_C_CHILD, server.base, str(tmp_path)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        parts = [tmp_path / f"s{i}.parquet.part" for i in range(3)]
        deadline = time.monotonic() + 20
        while not all(p.exists() and p.stat().st_size > 0 for p in parts):
            assert time.monotonic() < deadline and child.poll() is None, child.stderr.read()
            time.sleep(0.02)
        child.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = child.communicate(timeout=10)
        assert time.monotonic() - t0 < 2  # workers stop at their next read, not after their file
    finally:
        child.kill()
    assert child.returncode != 0 and b"KeyboardInterrupt" in err
    assert leftovers(tmp_path) == [f"s{i}.parquet.part" for i in range(3)]
    sizes = [p.stat().st_size for p in parts]
    assert all(0 < s < len(PARQUET) for s in sizes)

    jobs = [(f"{server.base}/s{i}.parquet", tmp_path / f"s{i}.parquet", {"sha256": SHA, **FAST}) for i in range(3)]
    out = download_many(jobs)
    assert all(p.read_bytes() == PARQUET for p in out)
    for i, size in enumerate(sizes):
        assert server.hits(f"/s{i}.parquet")[-1] == f"bytes={size}-"


def test_import_has_no_side_effects():
    code = "import sys, threading; import nanochat.download; assert threading.active_count() == 1"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
