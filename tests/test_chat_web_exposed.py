"""scripts/chat_web.py as on a public RunPod port: RUNPOD_POD_ID and an API key set, a 128-descriptor limit.

One server process (1 CPU worker, a tiny random checkpoint whose meta names the assistant) serves the module.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import socket
import time
from collections import Counter

import httpx
import pytest

from tests.conftest import make_tiny_checkpoint
from tests.test_chat_web import chat_web_process

KEY = "s3cret-key"
NAME = "나노챗"
FD_LIMIT = 128
HEADER_TIMEOUT = 2.0


class Exposed:
    def __init__(self, url: str, port: int, pid: int, log_path, start: list[str]):
        self.url, self.port, self.pid, self.log_path, self.start = url, port, pid, log_path, start

    @property
    def auth(self) -> dict:
        return {"authorization": f"Bearer {KEY}"}


def _fd_limit():  # in the child, before exec: its soft and hard RLIMIT_NOFILE
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    base = tmp_path_factory.mktemp("chat_web_exposed")
    ckpt = make_tiny_checkpoint(base, "sft")
    meta_path = next(ckpt.glob("*/meta.json"))
    meta = json.loads(meta_path.read_text())
    meta["options"] = {"identity_name": NAME}  # what chat_sft --identity_name records
    meta_path.write_text(json.dumps(meta))
    log_path = base / "server.log"
    with chat_web_process(base, ["--device_type=cpu", "--num_workers=1", "--max_new_tokens=8",
                                 f"--header_timeout={HEADER_TIMEOUT}"],
                          env={"RUNPOD_POD_ID": "testpod", "NANOCHAT_API_KEY": KEY}, preexec_fn=_fd_limit) as (url, port, pid):
        text = log_path.read_text()
        start = text[text.index("serving "):].splitlines()[:4]
        yield Exposed(url, port, pid, log_path, start)


def test_start_line_on_a_pod(exposed):
    first, proxy, key, limits = exposed.start
    assert limits.startswith("limits: ")
    assert f"at http://0.0.0.0:{exposed.port}/" in first and "RUNPOD_POD_ID" in first
    assert f"https://testpod-{exposed.port}.proxy.runpod.net/" in proxy
    assert "API key required" in key
    assert KEY not in exposed.log_path.read_text()  # the key is never printed


def test_start_lines_warn_when_exposed_without_a_key(monkeypatch):
    from scripts.chat_web import listen_host, start_lines

    monkeypatch.delenv("RUNPOD_POD_ID", raising=False)
    assert listen_host(None) == ("127.0.0.1", "this machine only")
    assert start_lines("127.0.0.1", "this machine only", 8000, ["cpu"], None) == [
        "serving 1 worker(s) on cpu at http://127.0.0.1:8000/ (this machine only)"]
    lines = start_lines("0.0.0.0", "--host", 8000, ["cuda:0"], None)
    assert "http://<this machine's address>:8000/" in lines[1] and "--api_key" in lines[2]
    monkeypatch.setenv("RUNPOD_POD_ID", "abc123")
    assert listen_host(None)[0] == "0.0.0.0" and listen_host("127.0.0.1")[0] == "127.0.0.1"


def test_api_key(exposed):
    from openai import AuthenticationError, OpenAI

    messages = [{"role": "user", "content": "hi"}]
    out = OpenAI(base_url=exposed.url + "/v1", api_key=KEY, timeout=30).chat.completions.create(
        model="nanochat", messages=messages, max_tokens=2)
    assert out.choices[0].message.role == "assistant"
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=exposed.url + "/v1", api_key="wrong", timeout=30, max_retries=0).chat.completions.create(
            model="nanochat", messages=messages, max_tokens=2)
    r = httpx.post(exposed.url + "/chat/completions", json={"messages": messages})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(exposed.url + "/stats").status_code == 401
    assert httpx.get(exposed.url + "/stats", headers=exposed.auth).json()["workers"] == 1
    # what a load balancer and the page need stays open
    assert httpx.get(exposed.url + "/health").json()["status"] == "ok"
    assert httpx.get(exposed.url + "/config").json() == {
        "name": NAME, "model": "nanochat", "auth": True,
        "defaults": {"temperature": 0.8, "top_k": 50, "max_tokens": 8}}
    assert "<html" in httpx.get(exposed.url + "/").text


def test_runpod_proxy_origin_is_allowed(exposed):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    proxy = f"https://testpod-{exposed.port}.proxy.runpod.net"
    r = httpx.post(exposed.url + "/chat/completions", json=body, headers={**exposed.auth, "origin": proxy}, timeout=30)
    assert r.status_code == 200
    r = httpx.post(exposed.url + "/chat/completions", json=body, headers={**exposed.auth, "origin": proxy + ".evil"})
    assert r.status_code == 403


def test_idle_connections_are_capped_and_closed(exposed):
    """150 silent or slow-header connections at a 128-descriptor limit: /health still answers, the server
    closes them within the header deadline, and the log stays small (it used to grow by MBs per second)."""
    conns = []
    for i in range(150):
        try:
            sock = socket.create_connection(("127.0.0.1", exposed.port), timeout=5)
        except OSError:  # the kernel's backlog is full for a moment: the client would retry
            continue
        if i % 3 == 0:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a header that never ends (slowloris)
        conns.append(sock)
    assert len(conns) > 100
    cap = int(re.search(r"limits: (\d+) open connections", "\n".join(exposed.start)).group(1))
    assert cap < FD_LIMIT - 20
    t0 = time.monotonic()
    for _ in range(5):  # past the cap a new connection evicts the longest-idle one (see test_chat_web)
        assert httpx.get(exposed.url + "/health", timeout=5).status_code == 200
    # and the server's descriptors stay under the limit with room to spare
    assert len(os.listdir(f"/proc/{exposed.pid}/fd")) <= cap + 40
    for sock in conns:  # every one is closed by the server: EOF (or a reset) within the deadline + slack
        sock.settimeout(HEADER_TIMEOUT + 15)
        try:
            assert sock.recv(1024) == b""
        except ConnectionResetError:
            pass
        sock.close()
    assert time.monotonic() - t0 < HEADER_TIMEOUT + 15
    log = exposed.log_path.read_text()
    assert len(log) < 20_000, log[-2000:]
    assert "out of system resource" not in log and "Traceback" not in log, log[-2000:]


def test_repeat_filter_summarizes_repeats():
    from nanochat.http_guard import RepeatFilter

    filt = RepeatFilter(burst=3, interval=60.0)
    records = [logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "accept failed", None, None)
               for _ in range(1000)]
    passed = [r for r in records if filt.filter(r)]
    assert len(passed) == 3
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "another error", None, None)
    assert filt.filter(other)
    filt.interval = 0.0  # a new window: the next copy goes through and says how many were dropped
    late = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "accept failed", None, None)
    assert filt.filter(late) and "997 more like this" in late.getMessage()
    assert filt.filter(late)  # a record passing several handlers is decided once
    assert Counter(r.getMessage() for r in passed) == {"accept failed": 3}


@pytest.mark.slow
def test_browser_with_api_key_and_name(exposed):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(exposed.url + "/")
            page.wait_for_function(f"document.title === {json.dumps(NAME)}")
            assert page.inner_text("h1") == NAME and page.is_visible("#api-key")
            page.fill("#input", "hello")
            page.click("#send")
            page.wait_for_selector(".msg.error")
            assert "API key" in page.inner_text(".msg.error")
            page.fill("#api-key", KEY)
            page.dispatch_event("#api-key", "change")
            page.click(".msg.user .actions button:has-text('Edit')")
            page.click(".msg.user button:has-text('Save & send')")
            page.wait_for_selector(".msg.assistant .actions button:has-text('Regenerate')", timeout=20000)
            assert page.query_selector(".msg.error") is None
            assert page.evaluate("localStorage.getItem('nanochat.api_key')") == KEY
        finally:
            browser.close()
