"""Serve a chat model over HTTP: a web UI at / and an OpenAI-compatible API.

    python -m scripts.chat_web                          # latest sft checkpoint, http://127.0.0.1:8000
    python -m scripts.chat_web --host=0.0.0.0 --api_key=SECRET   # reachable from outside, with a key
    python -m scripts.chat_web --num_gpus=8             # one model replica per GPU, 8 requests at once
    python -m scripts.chat_web --device_type=cpu --num_workers=2 --source=base   # tiny CPU run

On a RunPod pod (RUNPOD_POD_ID set) it listens on every interface, so the pod's
"Connect -> HTTP Service [8000]" reaches it, and prints the proxy URL. Endpoints: POST
/chat/completions (UI stream), POST /v1/chat/completions (OpenAI clients, e.g.
OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")), GET /health, GET /config, GET /stats.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass
from typing import Literal

from nanochat.common import print0, run_main, setup_logging
from nanochat.config import format_config, parse_args
from nanochat.phases import Phase

API_KEY_ENV = "NANOCHAT_API_KEY"


@dataclass
class Options:
    port: int = 8000  # TCP port
    host: str | None = None  # interface to listen on (None = 127.0.0.1, or 0.0.0.0 on a RunPod pod)
    source: Phase = "sft"  # which phase's checkpoint
    model_tag: str | None = None  # checkpoint folder (None = the most recently saved tag)
    step: int | None = None  # checkpoint step (None = latest)
    device_type: Literal["cuda", "mps", "cpu"] | None = None  # where the model runs (None = autodetect)
    num_gpus: int | None = None  # CUDA: replicas, one per GPU (None = every visible GPU)
    num_workers: int = 1  # CPU / MPS: model replicas (requests served at once)
    temperature: float = 0.8  # default sampling temperature (a request may set its own, 0-2)
    top_k: int = 50  # default top-k (1-200)
    max_new_tokens: int = 512  # default reply length limit in tokens (1-4096; a request's max_tokens overrides)
    max_queue: int = 64  # requests that may wait for a busy worker; beyond that 503
    queue_timeout: float = 30.0  # seconds a request waits for a worker before 503
    api_key: str | None = None  # require 'Authorization: Bearer KEY' (None = $NANOCHAT_API_KEY if set); use on a public port
    name: str | None = None  # the assistant's name on the page (None = the checkpoint's identity_name, else nanochat)
    max_connections: int = 256  # open client connections (also kept below the file-descriptor limit)
    header_timeout: float = 10.0  # seconds a client has to send a request's headers before it is disconnected


def worker_devices(device_type: str, num_gpus: int | None, num_workers: int) -> list[str]:
    """One device string per worker: distinct GPUs on CUDA, num_workers copies of the device elsewhere."""
    if device_type == "cuda":
        import torch

        visible = torch.cuda.device_count()
        n = visible if num_gpus is None else num_gpus
        if not 1 <= n <= visible:
            raise ValueError(f"--num_gpus={n} but {visible} GPUs are visible (use 1-{visible}, or none for all)")
        return [f"cuda:{i}" for i in range(n)]
    if num_workers < 1:
        raise ValueError(f"--num_workers must be at least 1, got {num_workers}")
    return [device_type] * num_workers


def listen_host(host: str | None) -> tuple[str, str]:
    """(address to bind, why): an explicit --host, else every interface on a RunPod pod, else loopback."""
    if host is not None:
        return host, "--host"
    if os.environ.get("RUNPOD_POD_ID"):
        return "0.0.0.0", "every interface: RUNPOD_POD_ID is set"
    return "127.0.0.1", "this machine only"


def is_exposed(host: str) -> bool:
    if host in ("localhost", ""):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it resolves to something reachable
        return True


def start_lines(host: str, why: str, port: int, workers: list[str], api_key: str | None) -> list[str]:
    """What the server prints once it listens: where, how to open it from outside, and whether it is open."""
    lines = [f"serving {len(workers)} worker(s) on {', '.join(workers)} at http://{host}:{port}/ ({why})"]
    if not is_exposed(host):
        return lines
    pod = os.environ.get("RUNPOD_POD_ID")
    if pod:
        lines.append(f"open https://{pod}-{port}.proxy.runpod.net/ (RunPod: Connect -> HTTP Service [{port}])")
    else:
        lines.append(f"open http://<this machine's address>:{port}/ from other machines")
    if api_key is None:
        lines.append(f"warning: the port is public and there is no API key: anyone who reaches it can generate; "
                     f"set --api_key or {API_KEY_ENV}")
    else:
        lines.append("API key required: the page asks for it once; clients send 'Authorization: Bearer KEY'")
    return lines


def runpod_origins(port: int) -> tuple[str, ...]:
    """The origin of RunPod's HTTPS proxy for this pod and port, which the page is served from there."""
    pod = os.environ.get("RUNPOD_POD_ID")
    return (f"https://{pod}-{port}.proxy.runpod.net",) if pod else ()


def load_engines(opts: Options, devices: list[str]) -> tuple[list, dict]:
    """One Engine per device from the same checkpoint, and that checkpoint's meta."""
    from nanochat.checkpoint import load_model_and_tokenizer
    from nanochat.engine import Engine

    engines, meta = [], {}
    for device in devices:
        model, tokenizer, meta = load_model_and_tokenizer(opts.source, opts.step, tag=opts.model_tag, device=device)
        engines.append(Engine(model, tokenizer))
    return engines, meta


def main(opts: Options) -> None:
    from nanochat.chat_server import RequestError, ServerSettings, create_app, parse_chat_request
    from nanochat.common import resolve_device_type
    from nanochat.http_guard import LOOPBACK_HOSTS, ConnectionLimits, raise_fd_limit, serve

    api_key = opts.api_key if opts.api_key is not None else (os.environ.get(API_KEY_ENV) or None)
    print0(format_config(dataclasses.replace(opts, api_key=None if api_key is None else "(set)")))
    if opts.max_connections < 1 or not opts.header_timeout > 0:
        raise ValueError("--max_connections must be at least 1 and --header_timeout above 0")
    devices = worker_devices(resolve_device_type(opts.device_type or ""), opts.num_gpus, opts.num_workers)
    settings = ServerSettings(temperature=opts.temperature, top_k=opts.top_k, max_tokens=opts.max_new_tokens,
                              max_queue=opts.max_queue, queue_timeout=opts.queue_timeout, api_key=api_key,
                              allowed_origins=runpod_origins(opts.port))
    # check the defaults against the same limits as request values, before the slow model load
    try:
        parse_chat_request({"messages": [{"role": "user", "content": "x"}], "temperature": opts.temperature,
                            "top_k": opts.top_k, "max_tokens": opts.max_new_tokens}, settings)
    except RequestError as e:
        raise ValueError(f"--{e.message.replace('max_tokens', 'max_new_tokens')}") from None
    # load every replica before listening: a missing checkpoint fails here, in one line
    engines, meta = load_engines(opts, devices)
    settings.name = opts.name or (meta.get("options") or {}).get("identity_name") or "nanochat"
    host, why = listen_host(opts.host)
    if not is_exposed(host):
        settings.allowed_hosts = LOOPBACK_HOSTS | {host}
    app = create_app(engines, engines[0].tokenizer, settings)
    raise_fd_limit()
    # the cap is taken after the model load, so the descriptors the load keeps open are counted
    limits = ConnectionLimits.within_fd_limit(opts.max_connections, header_timeout=opts.header_timeout)
    for line in start_lines(host, why, opts.port, devices, api_key):
        print0(line)
    print0(f"limits: {limits.max_connections} open connections (listen backlog {limits.backlog}), request headers "
           f"within {limits.header_timeout:g} s, {settings.max_body_bytes} body bytes, {opts.max_queue} queued requests")
    serve(app, host, opts.port, limits)


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.chat_web", description=__doc__))
