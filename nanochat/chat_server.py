"""The chat web app: request validation, a pool of model workers, and streaming endpoints.

    app = create_app([engine_gpu0, engine_gpu1], tokenizer, ServerSettings())

Each worker is one Engine (one model replica on one device). A request waits in a bounded queue
for a free worker, generates in a thread so the event loop keeps serving other clients, and
streams tokens back as server-sent events. Endpoints: POST /chat/completions (the UI's simple
stream), POST /v1/chat/completions (OpenAI-compatible), GET /health, GET /stats, GET /.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

UI_PATH = Path(__file__).with_name("ui.html")
MODEL_NAME = "nanochat"

# The reference server's limits (see ANCHORS): they bound the work one request can ask for.
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8000
MAX_TOTAL_CHARS = 32000
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_K_RANGE = (1, 200)
MAX_TOKENS_RANGE = (1, 4096)
ROLES = ("system", "user", "assistant")


@dataclass
class ServerSettings:
    temperature: float = 0.8  # defaults for requests that do not set their own
    top_k: int = 50
    max_tokens: int = 512
    max_queue: int = 64  # requests allowed to wait for a worker; more get 503 at once
    queue_timeout: float = 30.0  # seconds a request may wait for a worker before 503


class RequestError(Exception):
    """A request the server refuses; becomes an HTTP error with a JSON body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class ChatRequest:
    messages: list[dict]
    temperature: float
    top_k: int | None
    top_p: float | None
    max_tokens: int


def _number(body: dict, key: str, default, lo, hi, integer: bool):
    value = body.get(key)
    if value is None:
        return default
    # bool is an int subclass: `true` as a temperature is a client bug, not 1.0
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise RequestError(400, f"{key} must be {'an integer' if integer else 'a number'}, got {value!r:.40}")
    if not lo <= value <= hi:
        raise RequestError(400, f"{key} must be between {lo} and {hi}, got {value}")
    return value


def parse_chat_request(body: object, settings: ServerSettings, openai: bool = False) -> ChatRequest:
    """Check a request body against the reference limits; raises RequestError naming the problem."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(400, f"too many messages: {len(messages)} > {MAX_MESSAGES}")
    total = 0
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(400, f"message {i} must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RequestError(400, f"message {i} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise RequestError(400, f"message {i} ({role}) must have non-empty text content")
        if len(content) > MAX_MESSAGE_CHARS:
            raise RequestError(400, f"message {i} is too long: {len(content)} > {MAX_MESSAGE_CHARS} characters")
        total += len(content)
        clean.append({"role": role, "content": content})
    if total > MAX_TOTAL_CHARS:
        raise RequestError(400, f"conversation is too long: {total} > {MAX_TOTAL_CHARS} characters")
    if clean[-1]["role"] != "user":
        raise RequestError(400, "the last message must be from the user")
    if openai:
        n = body.get("n", 1)
        if n != 1:
            raise RequestError(400, f"only n=1 is supported, got {n!r:.20}")
    temperature = _number(body, "temperature", settings.temperature, *TEMPERATURE_RANGE, integer=False)
    top_k = _number(body, "top_k", settings.top_k, *TOP_K_RANGE, integer=True)
    top_p = _number(body, "top_p", None, 0.0, 1.0, integer=False) if openai else None
    if top_p is not None and top_p <= 0:
        raise RequestError(400, f"top_p must be in (0, 1], got {top_p}")
    max_tokens = _number(body, "max_tokens", settings.max_tokens, *MAX_TOKENS_RANGE, integer=True)
    if openai and body.get("max_completion_tokens") is not None:  # the newer OpenAI spelling
        max_tokens = _number(body, "max_completion_tokens", max_tokens, *MAX_TOKENS_RANGE, integer=True)
    return ChatRequest(clean, float(temperature), top_k, top_p, max_tokens)


class Worker:
    """One engine (one model replica on one device) and what it has done."""

    def __init__(self, index: int, engine):
        self.index, self.engine = index, engine
        self.busy = False
        self.served = 0
        model = getattr(engine, "model", None)
        self.device = str(next(model.parameters()).device) if model is not None else ""


class PoolBusy(Exception):
    pass


class WorkerPool:
    """Free workers in an asyncio queue: acquire waits (bounded in count and time) for one."""

    def __init__(self, engines: list, max_queue: int, queue_timeout: float):
        assert engines, "a pool needs at least one engine"
        self.workers = [Worker(i, e) for i, e in enumerate(engines)]
        self.max_queue, self.queue_timeout = max_queue, queue_timeout
        self.waiting = 0
        self.served = 0
        self.cancelled = 0  # generations stopped early because their client went away
        self._free: asyncio.Queue[Worker] = asyncio.Queue()
        # one thread per worker, apart from the default pool that Starlette uses for sync endpoints
        self.executor = ThreadPoolExecutor(max_workers=len(self.workers), thread_name_prefix="nanochat-worker")
        for w in self.workers:
            self._free.put_nowait(w)

    async def acquire(self) -> Worker:
        if self._free.empty() and self.waiting >= self.max_queue:
            raise PoolBusy(f"server busy: {self.waiting} requests already waiting; retry later")
        self.waiting += 1
        try:
            # wait_for (not asyncio.timeout) keeps Python 3.10 working; a get cancelled by the timeout
            # leaves its worker in the queue for the next waiter
            worker = await asyncio.wait_for(self._free.get(), self.queue_timeout)
        except asyncio.TimeoutError:
            raise PoolBusy(f"server busy: no worker free within {self.queue_timeout:g} s; retry later") from None
        finally:
            self.waiting -= 1
        worker.busy = True
        return worker

    def release(self, worker: Worker, cancelled: bool = False) -> None:
        worker.busy = False
        worker.served += 1
        self.served += 1
        self.cancelled += cancelled
        self._free.put_nowait(worker)

    def stats(self) -> dict:
        busy = sum(w.busy for w in self.workers)
        return {
            "workers": len(self.workers),
            "busy": busy,
            "free": len(self.workers) - busy,
            "queue_length": self.waiting,
            "requests_served": self.served,
            "requests_cancelled": self.cancelled,
            "per_worker": [{"index": w.index, "busy": w.busy, "served": w.served,
                            "device": w.device} for w in self.workers],
        }


def _context_len(engine) -> int | None:
    """Longest sequence the model can attend over (rotary tables cover a multiple of sequence_len)."""
    config = getattr(getattr(engine, "model", None), "config", None)
    if config is None:
        return None
    from nanochat.gpt import ROTARY_HEADROOM

    return config.sequence_len * ROTARY_HEADROOM


class Generation:
    """One request's generation on a worker thread, streamed to the event loop as text pieces.

    The thread pushes ('text', str) items, then ('end', finish_reason) or ('error', message). Setting
    `cancel` (client gone) stops it at the next token; the worker is released when the thread ends,
    whatever the client does, so a dropped connection can never leak a worker.
    """

    def __init__(self, pool: WorkerPool, worker: Worker, tokenizer, prompt: list[int], req: ChatRequest):
        self.pool, self.worker, self.tokenizer = pool, worker, tokenizer
        self.prompt, self.req = prompt, req
        self.cancel = threading.Event()
        self.items: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.completion_tokens = 0
        self.finish = ""  # stop | length | cancelled | error, once the thread is done
        self.stops = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.bos_token_id}
        loop = asyncio.get_running_loop()
        self._push: Callable[[tuple[str, object]], None] = lambda item: loop.call_soon_threadsafe(
            self.items.put_nowait, item)
        self.future = loop.run_in_executor(pool.executor, self._run)
        self.future.add_done_callback(lambda _: pool.release(worker, cancelled=self.finish == "cancelled"))

    def _run(self) -> None:
        # bytes -> text incrementally: a UTF-8 character split across tokens is held back until its
        # last byte arrives, instead of being sent as U+FFFD pieces
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        finish = "length"
        req = self.req
        try:
            steps = self.worker.engine.generate(
                self.prompt, num_samples=1, max_tokens=req.max_tokens, temperature=req.temperature,
                top_k=req.top_k, top_p=req.top_p, seed=random.randrange(2**31))
            try:
                for column, _masks in steps:
                    if self.cancel.is_set():
                        finish = "cancelled"
                        break
                    token = column[0]
                    if token in self.stops:
                        finish = "stop"
                        break
                    self.completion_tokens += 1
                    text = decoder.decode(self.tokenizer.id_to_token_bytes(token))
                    if text:
                        self._push(("text", text))
            finally:
                close = getattr(steps, "close", None)
                if close is not None:
                    close()  # frees the engine's KV cache now, not at garbage collection
            tail = decoder.decode(b"", final=True)
            if tail:
                self._push(("text", tail))
            self.finish = finish
            self._push(("end", finish))
        except Exception as e:  # the client gets an error event; the server keeps running
            self.finish = "error"
            self._push(("error", f"generation failed: {type(e).__name__}: {e}"))

    async def pieces(self) -> AsyncIterator[tuple[str, object]]:
        """Yield ('text', str) items, then one ('end', reason) or ('error', message)."""
        try:
            while True:
                kind, value = await self.items.get()
                yield kind, value
                if kind != "text":
                    return
        finally:
            # runs on normal end and when Starlette cancels the stream because the client left
            self.cancel.set()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _error_response(err: RequestError) -> JSONResponse:
    return JSONResponse({"error": {"message": err.message, "type": err.kind}}, status_code=err.status)


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def create_app(engines: list, tokenizer, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving `engines` (one worker each). Must be served from one event loop."""
    settings = settings or ServerSettings()
    app = FastAPI(title="nanochat")
    state: dict[str, WorkerPool] = {}
    started = time.time()
    context = _context_len(engines[0])

    def pool() -> WorkerPool:
        # built lazily so its asyncio queue belongs to the loop that serves requests
        if "pool" not in state:
            state["pool"] = WorkerPool(engines, settings.max_queue, settings.queue_timeout)
        return state["pool"]

    async def start(request: Request, openai: bool) -> Generation:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "the request body is not valid JSON") from None
        req = parse_chat_request(body, settings, openai=openai)
        try:
            prompt = tokenizer.render_for_completion({"messages": req.messages})
        except ValueError as e:  # role order and the like, worded by the tokenizer
            raise RequestError(400, str(e)) from None
        if context is not None:
            if len(prompt) >= context:
                raise RequestError(400, f"conversation is {len(prompt)} tokens; the model reads at most {context}")
            req.max_tokens = min(req.max_tokens, context - len(prompt))
        try:
            worker = await pool().acquire()
        except PoolBusy as e:
            raise RequestError(503, str(e), "server_busy") from None
        return Generation(pool(), worker, tokenizer, prompt, req)

    @app.exception_handler(RequestError)
    async def _on_request_error(request: Request, err: RequestError):
        return _error_response(err)

    @app.get("/")
    async def index():
        return HTMLResponse(UI_PATH.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "ready": True, "workers": len(engines)}

    @app.get("/stats")
    async def stats():
        return {**pool().stats(), "uptime_s": round(time.time() - started, 1)}

    @app.post("/chat/completions")
    async def chat(request: Request):
        gen = await start(request, openai=False)

        async def events():
            async for kind, value in gen.pieces():
                if kind == "text":
                    yield _sse({"token": value})
                elif kind == "error":
                    yield _sse({"error": value})
            yield _sse({"done": True})

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request):
        gen = await start(request, openai=True)
        body = await request.json()
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        model = body.get("model") if isinstance(body.get("model"), str) else MODEL_NAME

        def chunk(delta: dict, finish: str | None = None) -> str:
            return _sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        if body.get("stream"):
            async def events():
                yield chunk({"role": "assistant", "content": ""})
                async for kind, value in gen.pieces():
                    if kind == "text":
                        yield chunk({"content": value})
                    elif kind == "error":
                        yield _sse({"error": {"message": value, "type": "server_error"}})
                    else:
                        yield chunk({}, "stop" if value == "stop" else "length")
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

        parts, finish = [], "length"
        async for kind, value in gen.pieces():
            if kind == "text":
                parts.append(value)
            elif kind == "error":
                return JSONResponse({"error": {"message": value, "type": "server_error"}}, status_code=500)
            else:
                finish = "stop" if value == "stop" else "length"
        usage = {"prompt_tokens": len(gen.prompt), "completion_tokens": gen.completion_tokens,
                 "total_tokens": len(gen.prompt) + gen.completion_tokens}
        return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                             "finish_reason": finish}],
                "usage": usage}

    return app
