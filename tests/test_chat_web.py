"""scripts/chat_web.py and nanochat/chat_server.py: the real server on a tiny random checkpoint.

One server process (2 CPU workers) is shared by the module; a few tests run the app in-process on
a scripted engine where they need exact tokens or a worker that stays busy.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import REPO_ROOT, make_tiny_checkpoint, subprocess_env

N_WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse_data(text: str) -> list[str]:
    """The data payloads of an SSE body; lines may end in \\r\\n or \\n."""
    events, data = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "":
            if data:
                events.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return events


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of `python -m scripts.chat_web` serving a tiny checkpoint on a free port."""
    base = tmp_path_factory.mktemp("chat_web_base")
    make_tiny_checkpoint(base, "sft")
    port = free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.chat_web", f"--port={port}", "--device_type=cpu",
         f"--num_workers={N_WORKERS}", "--max_new_tokens=16", "--queue_timeout=20"],
        cwd=REPO_ROOT, env=subprocess_env(NANOCHAT_BASE_DIR=str(base)), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(base / 'server.log').read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not start in 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_all_free(url: str, timeout: float = 10.0) -> dict:
    deadline = time.time() + timeout
    while True:
        stats = httpx.get(url + "/stats").json()
        if stats["busy"] == 0 or time.time() > deadline:
            return stats
        time.sleep(0.05)


# ---- the real server


def test_missing_checkpoint_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "scripts.chat_web", "--device_type=cpu", f"--port={free_port()}"],
                       cwd=REPO_ROOT, env=subprocess_env(NANOCHAT_BASE_DIR=str(tmp_path / "empty")),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "sft" in lines[0], r.stderr


def test_health_stats_and_page(server):
    health = httpx.get(server + "/health").json()
    assert health == {"status": "ok", "ready": True, "workers": N_WORKERS}
    stats = httpx.get(server + "/stats").json()
    assert stats["workers"] == N_WORKERS and stats["free"] + stats["busy"] == N_WORKERS
    assert {"queue_length", "requests_served"} <= stats.keys()
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<meta name="viewport"' in page.text
    assert not any(s in page.text for s in ('src="http', "href=\"http", "@import", "cdn")), "must be self-contained"


def test_chat_stream_events(server):
    served = httpx.get(server + "/stats").json()["requests_served"]
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
            "temperature": 1.0, "top_k": 50, "max_tokens": 8}
    r = httpx.post(server + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(d) for d in sse_data(r.text)]
    assert events[-1] == {"done": True}
    tokens = events[:-1]
    assert len(tokens) <= 8 and all(set(e) == {"token"} and e["token"] for e in tokens)
    assert wait_all_free(server)["requests_served"] >= served + 1


BAD_BODIES = {
    "no messages": {},
    "empty messages": {"messages": []},
    "messages not a list": {"messages": "hi"},
    "bad role": {"messages": [{"role": "tool", "content": "x"}]},
    "wrong order": {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
    "starts with assistant": {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]},
    "ends with assistant": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    "empty content": {"messages": [{"role": "user", "content": ""}]},
    "content not text": {"messages": [{"role": "user", "content": 5}]},
    "too many messages": {"messages": [{"role": r, "content": "x"} for _ in range(251) for r in ("user", "assistant")]
                          + [{"role": "user", "content": "x"}]},
    "message too long": {"messages": [{"role": "user", "content": "x" * 8001}]},
    "total too long": {"messages": [{"role": r, "content": "x" * 7000} for r in ("user", "assistant") * 2]
                       + [{"role": "user", "content": "x" * 5000}]},
    "temperature high": {"messages": [{"role": "user", "content": "x"}], "temperature": 2.5},
    "temperature negative": {"messages": [{"role": "user", "content": "x"}], "temperature": -0.1},
    "temperature not a number": {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
    "top_k zero": {"messages": [{"role": "user", "content": "x"}], "top_k": 0},
    "top_k high": {"messages": [{"role": "user", "content": "x"}], "top_k": 201},
    "max_tokens zero": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    "max_tokens high": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 4097},
    "max_tokens float": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5},
    "body not an object": [1, 2],
}


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
def test_validation_errors_are_4xx_json(server, path):
    for name, body in BAD_BODIES.items():
        r = httpx.post(server + path, json=body, timeout=10)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert isinstance(r.json()["error"]["message"], str), name
    r = httpx.post(server + path, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert httpx.get(server + "/health").status_code == 200


def test_openai_client(server):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="x", timeout=30)
    messages = [{"role": "user", "content": "Say hi"}]
    out = client.chat.completions.create(model="nanochat", messages=messages, max_tokens=6, temperature=0.5,
                                         top_p=0.9)
    assert out.choices[0].message.role == "assistant" and isinstance(out.choices[0].message.content, str)
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens <= 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="nanochat", messages=messages, max_tokens=6, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_client_disconnect_frees_worker(server):
    before = wait_all_free(server)
    # greedy decoding of this random model never reaches <|assistant_end|> in 600 tokens, so the
    # stream is long enough to leave in the middle
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "temperature": 0.0,
            "max_tokens": 4096}
    with httpx.Client(timeout=30) as client, client.stream("POST", server + "/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(3):
            while not next(lines).startswith("data:"):
                pass
        assert httpx.get(server + "/stats").json()["busy"] >= 1
    after = wait_all_free(server)
    assert after["busy"] == 0 and after["free"] == N_WORKERS
    assert after["requests_cancelled"] == before["requests_cancelled"] + 1


@pytest.mark.slow
def test_load_50_concurrent_streams(server):
    body = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4}

    async def one(client: httpx.AsyncClient) -> str:
        r = await client.post(server + "/chat/completions", json=body)
        if r.status_code == 503:
            assert "busy" in r.json()["error"]["message"]
            return "busy"
        assert r.status_code == 200, r.text
        assert json.loads(sse_data(r.text)[-1]) == {"done": True}
        return "ok"

    async def run() -> list[str]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client) for _ in range(50))), timeout=60)

    t0 = time.time()
    results = asyncio.run(run())
    print(f"50 streams: {results.count('ok')} served, {results.count('busy')} busy, {time.time() - t0:.1f} s")
    assert len(results) == 50 and results.count("ok") >= 1
    assert time.time() - t0 < 60
    assert httpx.get(server + "/health").status_code == 200
    assert wait_all_free(server)["queue_length"] == 0


@pytest.mark.slow
def test_browser_chat(server, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 800})  # phone width
            page.goto(server + "/")
            page.fill("#input", "Hello, who are you?")
            page.click("#send")
            page.wait_for_selector(".msg.user")
            assert page.inner_text(".msg.user .text") == "Hello, who are you?"
            # the reply has finished streaming when the Regenerate action appears under it
            page.wait_for_selector(".msg.assistant .actions button:has-text('Regenerate')", timeout=20000)
            # an assistant bubble is kept only if text streamed into it (empty replies are dropped)
            reply = page.evaluate("JSON.parse(localStorage.getItem('nanochat.conversation'))")
            assert [m["role"] for m in reply] == ["user", "assistant"] and reply[1]["content"]
            assert page.query_selector(".msg.error") is None
            page.screenshot(path=str(tmp_path / "chat.png"))
            regenerate = ".msg.assistant .actions button:has-text('Regenerate')"
            page.click(regenerate)
            page.wait_for_selector(regenerate, timeout=20000)
            assert page.locator(".msg").count() == 2  # the answer was replaced, not appended
            page.click(".msg.user .actions button:has-text('Edit')")
            page.fill(".msg.user textarea.edit-box", "Tell me a joke.")
            page.click(".msg.user button:has-text('Save & send')")
            page.wait_for_selector(regenerate, timeout=20000)
            assert page.inner_text(".msg.user .text") == "Tell me a joke." and page.locator(".msg").count() == 2
            # the page's SSE parser takes \r\n line ends (sse-starlette, proxies), even split across reads
            parsed = page.evaluate("""async () => {
                const chunks = ['data: {"token": "a"}\\r', '\\n\\r\\ndata: {"token"', ': "b"}\\n\\n', 'data: {"done": true}\\r\\n\\r\\n'];
                const enc = new TextEncoder();
                const body = new ReadableStream({start(c) { chunks.forEach(x => c.enqueue(enc.encode(x))); c.close(); }});
                const out = [];
                for await (const data of sseEvents(new Response(body))) out.push(data);
                return out;
            }""")
            assert parsed == ['{"token": "a"}', '{"token": "b"}', '{"done": true}']
            page.click("#new-chat")
            page.wait_for_selector(".empty")
            assert page.query_selector(".msg") is None
        finally:
            browser.close()


# ---- in-process app on a scripted engine


class ScriptedEngine:
    """Engine stand-in: yields fixed token ids one per step; `gate`, when given, holds each step."""

    def __init__(self, tokenizer, ids: list[int], gate: threading.Event | None = None):
        self.tokenizer, self.ids, self.gate = tokenizer, ids, gate

    def generate(self, tokens, *, num_samples=1, max_tokens=256, temperature=1.0, top_k=None, top_p=None, seed=42):
        for t in self.ids[:max_tokens]:
            if self.gate is not None:
                self.gate.wait(5)
            yield [t], [1]


@pytest.fixture
def tokenizer():
    from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

    return Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)


@pytest.fixture
def serve_app():
    """serve_app(app) -> base URL of that app on uvicorn in a thread; stopped after the test."""
    import uvicorn

    servers = []

    def start(app) -> str:
        port = free_port()
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        servers.append((srv, thread))
        deadline = time.time() + 10
        while not srv.started:
            assert time.time() < deadline, "in-process server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for srv, thread in servers:
        srv.should_exit = True
        thread.join(timeout=10)


def test_multibyte_characters_are_never_split(tokenizer, serve_app):
    from nanochat.chat_server import create_app

    text = "héllo 🙂 한국어"
    ids = list(text.encode("utf-8")) + [tokenizer.encode_special("<|assistant_end|>"), 65, 66]
    url = serve_app(create_app([ScriptedEngine(tokenizer, ids)], tokenizer))
    r = httpx.post(url + "/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    events = [json.loads(d) for d in sse_data(r.text)]
    pieces = [e["token"] for e in events[:-1]]
    assert "\ufffd" not in "".join(pieces) and "".join(pieces) == text  # stops at <|assistant_end|>
    assert events[-1] == {"done": True}
    out = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}).json()
    assert out["choices"][0]["message"]["content"] == text and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == len(text.encode("utf-8"))


def test_busy_pool_answers_503(tokenizer, serve_app):
    from nanochat.chat_server import ServerSettings, create_app

    gate = threading.Event()
    # the timeout is long enough that the second request is still waiting whatever the machine's load
    settings = ServerSettings(max_queue=1, queue_timeout=3.0)
    url = serve_app(create_app([ScriptedEngine(tokenizer, [65] * 50, gate)], tokenizer, settings))
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 50}

    async def run():
        async with httpx.AsyncClient(timeout=20) as client:
            async def until(key, value):  # poll /stats instead of guessing how long the server takes
                for _ in range(200):
                    if (await client.get(url + "/stats")).json()[key] == value:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"/stats never showed {key} == {value}")

            first = asyncio.create_task(client.post(url + "/chat/completions", json=body))
            await until("busy", 1)  # the first request holds the only worker, blocked on the gate
            second = asyncio.create_task(client.post(url + "/chat/completions", json=body))  # waits, times out
            await until("queue_length", 1)
            third = await client.post(url + "/chat/completions", json=body)  # queue full: refused at once
            stats = (await client.get(url + "/stats")).json()
            second = await second
            gate.set()
            return await first, second, third, stats

    first, second, third, stats = asyncio.run(run())
    assert stats["busy"] == 1 and stats["queue_length"] == 1
    assert third.status_code == 503 and "waiting" in third.json()["error"]["message"]
    assert second.status_code == 503 and "within" in second.json()["error"]["message"]
    assert first.status_code == 200 and sse_data(first.text)[-1] == '{"done": true}'
