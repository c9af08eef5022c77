"""Serve a chat model over HTTP: a web UI at / and an OpenAI-compatible API.

    python -m scripts.chat_web                          # latest sft checkpoint, http://127.0.0.1:8000
    python -m scripts.chat_web --host=0.0.0.0           # reachable from outside (a cloud pod)
    python -m scripts.chat_web --num_gpus=8             # one model replica per GPU, 8 requests at once
    python -m scripts.chat_web --device_type=cpu --num_workers=2 --source=base   # tiny CPU run

Endpoints: POST /chat/completions (UI stream), POST /v1/chat/completions (OpenAI clients, e.g.
OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")), GET /health, GET /stats.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanochat.common import print0, run_main, setup_logging
from nanochat.config import format_config, parse_args


@dataclass
class Options:
    port: int = 8000  # TCP port
    host: str = "127.0.0.1"  # interface to listen on (0.0.0.0 = every interface, e.g. on a pod)
    source: str = "sft"  # checkpoint phase: base | mid | sft | rl (or a checkpoint directory)
    model_tag: str = ""  # checkpoint folder ('' = the most recently saved tag)
    step: int = -1  # checkpoint step (-1 = latest)
    device_type: str = ""  # cuda | mps | cpu ('' = autodetect)
    num_gpus: int = 0  # CUDA: replicas, one per GPU (0 = every visible GPU)
    num_workers: int = 1  # CPU / MPS: model replicas (requests served at once)
    temperature: float = 0.8  # default sampling temperature (a request may set its own, 0-2)
    top_k: int = 50  # default top-k (1-200)
    max_tokens: int = 512  # default reply length limit in tokens (1-4096)
    max_queue: int = 64  # requests that may wait for a busy worker; beyond that 503
    queue_timeout: float = 30.0  # seconds a request waits for a worker before 503


def worker_devices(device_type: str, num_gpus: int, num_workers: int) -> list[str]:
    """One device string per worker: distinct GPUs on CUDA, num_workers copies of the device elsewhere."""
    if device_type == "cuda":
        import torch

        visible = torch.cuda.device_count()
        n = num_gpus or visible
        if n > visible:
            raise ValueError(f"--num_gpus={n} but only {visible} GPUs are visible")
        return [f"cuda:{i}" for i in range(n)]
    if num_workers < 1:
        raise ValueError(f"--num_workers must be at least 1, got {num_workers}")
    return [device_type] * num_workers


def main(opts: Options) -> None:
    import uvicorn

    from nanochat.chat_server import RequestError, ServerSettings, create_app, parse_chat_request
    from nanochat.common import resolve_device_type
    from nanochat.engine import load_engine

    print0(format_config(opts))
    devices = worker_devices(resolve_device_type(opts.device_type), opts.num_gpus, opts.num_workers)
    settings = ServerSettings(temperature=opts.temperature, top_k=opts.top_k, max_tokens=opts.max_tokens,
                              max_queue=opts.max_queue, queue_timeout=opts.queue_timeout)
    # check the defaults against the same limits as request values, before the slow model load
    try:
        parse_chat_request({"messages": [{"role": "user", "content": "x"}], "temperature": opts.temperature,
                            "top_k": opts.top_k, "max_tokens": opts.max_tokens}, settings)
    except RequestError as e:
        raise ValueError(f"--{e.message}") from None
    tag, step = opts.model_tag or None, (None if opts.step < 0 else opts.step)
    # load every replica before listening: a missing checkpoint fails here, in one line
    engines = [load_engine(opts.source, model_tag=tag, step=step, device=d) for d in devices]
    app = create_app(engines, engines[0].tokenizer, settings)
    print0(f"serving {len(engines)} worker(s) on {', '.join(devices)} at http://{opts.host}:{opts.port}/")
    uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning")


if __name__ == "__main__":
    setup_logging()
    run_main(main, parse_args(Options, prog="python -m scripts.chat_web", description=__doc__))
