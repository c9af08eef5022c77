"""The chat server under load and under abandonment, on a tiny random checkpoint (or a running server).

    python dev/bench_server.py                              # starts chat_web on CPU, 2 workers
    python dev/bench_server.py --streams=50,200 --stream_tokens=64
    python dev/bench_server.py --url=http://127.0.0.1:8000  # a server that is already running (no API key)

Reported:
- /health latency (p50, p99, max) polled every 20 ms on its own connection while N streams run at once
  (N = each of --streams), with how many streams were served and how many got 503 (queue full);
- how long a worker stays busy after its client disconnects (a non-streaming request for the longest
  reply, closed once it generates): the time from close to /stats showing every worker free;
- a 1-token request's latency right after 4 such long requests were abandoned (2 generating, 2 queued).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "temperature": 0.0, "max_tokens": 4096}


def start_server(workers: int, device: str) -> tuple[subprocess.Popen, str, Path]:
    sys.path.insert(0, str(REPO))
    from tests.conftest import make_tiny_checkpoint, subprocess_env

    base = Path(tempfile.mkdtemp(prefix="bench_server_"))
    make_tiny_checkpoint(base, "sft")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = base / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", f"--port={port}", f"--device_type={device}",
                             f"--num_workers={workers}"], cwd=REPO, env=subprocess_env(NANOCHAT_BASE_DIR=str(base)),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            sys.exit("error: the server did not start in 120 s")
        time.sleep(0.2)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def health_under_streams(url: str, n: int, tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": tokens}
    latencies: list[float] = []
    outcome: dict[str, int] = {}
    done = threading.Event()

    async def stream(client: httpx.AsyncClient) -> None:
        try:
            async with client.stream("POST", url + "/chat/completions", json=body) as r:
                async for _ in r.aiter_bytes():
                    pass
                key = str(r.status_code)
        except httpx.HTTPError as e:
            key = type(e).__name__
        outcome[key] = outcome.get(key, 0) + 1

    def poll_health() -> None:  # a thread of its own, so the 200 client streams do not delay its timings
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                t0 = time.perf_counter()
                r = client.get(url + "/health")
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
                time.sleep(0.02)

    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(stream(client) for _ in range(n)))
            elapsed = time.perf_counter() - t0
    finally:
        done.set()
        poller.join()
    return {"streams": n, "outcome": outcome, "seconds": round(elapsed, 2), "health_samples": len(latencies),
            "health_p50_ms": round(1000 * statistics.median(latencies), 1),
            "health_p99_ms": round(1000 * pct(latencies, 0.99), 1), "health_max_ms": round(1000 * max(latencies), 1)}


def send_long(url: str, path: str = "/v1/chat/completions") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(LONG).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def stats_until(url: str, ok, timeout: float = 60.0) -> float:
    t0 = time.perf_counter()
    with httpx.Client() as client:
        while not ok(client.get(url + "/stats").json()):
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("/stats never reached the state")
            time.sleep(0.005)
    return time.perf_counter() - t0


def abandoned_hold(url: str, trials: int) -> dict:
    held = []
    for _ in range(trials):
        stats_until(url, lambda s: s["busy"] == 0)
        sock = send_long(url)
        stats_until(url, lambda s: s["busy"] >= 1)
        time.sleep(0.2)  # let it generate a while: the worker is mid-reply when the client leaves
        sock.close()
        held.append(stats_until(url, lambda s: s["busy"] == 0))
    return {"trials": trials, "held_median_ms": round(1000 * statistics.median(held), 1),
            "held_max_ms": round(1000 * max(held), 1)}


def one_token_after_abandoned(url: str, n: int = 4) -> dict:
    stats_until(url, lambda s: s["busy"] == 0)
    workers = httpx.get(url + "/stats").json()["workers"]
    socks = [send_long(url) for _ in range(n)]
    stats_until(url, lambda s: s["busy"] == workers and s["busy"] + s["queue_length"] >= min(n, workers + 1))
    for sock in socks:
        sock.close()
    t0 = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", json={**LONG, "max_tokens": 1}, timeout=120)
    r.raise_for_status()
    return {"abandoned": n, "one_token_request_ms": round(1000 * (time.perf_counter() - t0), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="bench a running server instead of starting one")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device_type", default="cpu")
    p.add_argument("--streams", default="50,200", help="comma-separated numbers of concurrent streams")
    p.add_argument("--stream_tokens", type=int, default=64)
    p.add_argument("--trials", type=int, default=5)
    a = p.parse_args()
    proc = None
    if a.url is None:
        proc, url, _log = start_server(a.workers, a.device_type)
    else:
        url = a.url
    try:
        results = [asyncio.run(health_under_streams(url, int(n), a.stream_tokens)) for n in a.streams.split(",")]
        results.append(abandoned_hold(url, a.trials))
        results.append(one_token_after_abandoned(url))
        for r in results:
            print(json.dumps(r))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
