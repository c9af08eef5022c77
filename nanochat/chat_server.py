"""The chat web app: request validation, a pool of model workers, and streaming endpoints.

    app = create_app([engine_gpu0, engine_gpu1], tokenizer, ServerSettings())
    http_guard.serve(app, "127.0.0.1", 8000, http_guard.ConnectionLimits())

Each worker is one Engine (one model replica on one device). A request waits in a bounded queue
for a free worker, generates in a thread so the event loop keeps serving other clients, and
streams tokens back as server-sent events. Endpoints: POST /chat/completions (the UI's simple
stream), POST /v1/chat/completions (OpenAI-compatible), GET /health, GET /config, GET /stats, GET /.

A client that goes away (while queued, while its reply is generated, or while it streams) gives
its worker back within a token: a task per request watches for the disconnect and sets the
generation's cancel flag, which the worker thread checks before every token. Every refused
request gets a 4xx with the API's JSON error; the checks that need no body (origin, API key,
content type, size) run in http_guard.RequestGuard before the body is read.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanochat.http_guard import RequestGuard, RequestPolicy, error_body

UI_PATH = Path(__file__).with_name("ui.html")
MODEL_NAME = "nanochat"

# karpathy/nanochat's chat_web limits: they bound the work one request can ask for.
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8000
MAX_TOTAL_CHARS = 32000
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_K_RANGE = (1, 200)
MAX_TOKENS_RANGE = (1, 4096)
ROLES = ("system", "user", "assistant")
# Sampling divides float32 logits by the temperature and compares float32 cumulative probabilities
# with top_p: a temperature near 1e-38 overflows the logits to inf (NaN probabilities), and a top_p
# below float32's smallest value (~1e-45) rounds to 0 and drops every token. Far below these
# minimums both are greedy decoding in all but name, so the API refuses them (0 asks for greedy).
MIN_TEMPERATURE = 1e-6
MIN_TOP_P = 1e-6
MAX_MODEL_CHARS = 256  # the "model" string is echoed back in every chunk
MAX_BODY_BYTES = 1 << 20  # 32,000 characters of conversation, at most 12 bytes each as JSON \uXXXX pairs


@dataclass
class ServerSettings:
    temperature: float = 0.8  # defaults for requests that do not set their own
    top_k: int = 50
    max_tokens: int = 512
    max_queue: int = 64  # requests allowed to wait for a worker; more get 503 at once
    queue_timeout: float = 30.0  # seconds a request may wait for a worker before 503
    name: str = "nanochat"  # the assistant's name, shown by the page (GET /config)
    api_key: str | None = None  # when set, required as `Authorization: Bearer KEY` (see http_guard)
    allowed_origins: tuple[str, ...] = ()  # pages on other origins that may call the API (e.g. a proxy URL)
    max_body_bytes: int = MAX_BODY_BYTES
    send_timeout: float = 30.0  # seconds a response write may wait for a client that stopped reading
    allowed_hosts: set[str] | None = None  # Host header names answered (None = any; see http_guard.RequestPolicy)


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
    model: str = MODEL_NAME  # OpenAI API: echoed back in the reply
    stream: bool = False  # OpenAI API: server-sent events instead of one JSON reply


def _number(body: dict, key: str, default, lo, hi, integer: bool):
    value = body.get(key)
    if value is None:
        return default
    # bool is an int subclass: `true` as a temperature is a client bug, not 1.0
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise RequestError(400, f"{key} must be {'an integer' if integer else 'a number'}, got {value!r:.40}")
    if not lo <= value <= hi:  # also refuses NaN and infinities, which JSON parsing lets through
        raise RequestError(400, f"{key} must be between {lo} and {hi}, got {value!r:.40}")
    return value


def _text(value: str, where: str) -> str:
    """Refuse strings UTF-8 cannot carry: a lone surrogate (a JSON "\\ud800") fails every later encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, f"{where} contains a lone UTF-16 surrogate (invalid Unicode)") from None
    return value


def parse_json_body(raw: bytes) -> object:
    """The request body as JSON, or a RequestError naming why it is not (never a 500)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(400, "the request body is not UTF-8 text") from None
    except RecursionError:
        raise RequestError(400, "the request body nests JSON too deeply") from None
    except json.JSONDecodeError as e:
        raise RequestError(400, f"the request body is not valid JSON: {e.msg} at character {e.pos}") from None
    except ValueError:  # int() refuses numbers of more than sys.get_int_max_str_digits() digits
        raise RequestError(400, "the request body has a number too long to read") from None


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
        _text(content, f"message {i}")
        if len(content) > MAX_MESSAGE_CHARS:
            raise RequestError(400, f"message {i} is too long: {len(content)} > {MAX_MESSAGE_CHARS} characters")
        total += len(content)
        clean.append({"role": role, "content": content})
    if total > MAX_TOTAL_CHARS:
        raise RequestError(400, f"conversation is too long: {total} > {MAX_TOTAL_CHARS} characters")
    if clean[-1]["role"] != "user":
        raise RequestError(400, "the last message must be from the user")
    model, stream = MODEL_NAME, False
    if openai:
        n = body.get("n")
        if n is not None and (type(n) is not int or n != 1):  # type(): `true` is an int too
            raise RequestError(400, f"only n=1 is supported, got {n!r:.20}")
        stream = body.get("stream")
        if stream is None:  # absent or null: not streamed
            stream = False
        if not isinstance(stream, bool):  # "false" is truthy: a string would silently stream
            raise RequestError(400, f"stream must be true or false, got {stream!r:.40}")
        model = body.get("model", MODEL_NAME)
        if model is None:
            model = MODEL_NAME
        if not isinstance(model, str) or len(model) > MAX_MODEL_CHARS:
            raise RequestError(400, f"model must be a string of at most {MAX_MODEL_CHARS} characters")
        _text(model, "model")
    temperature = _number(body, "temperature", settings.temperature, *TEMPERATURE_RANGE, integer=False)
    if 0 < temperature < MIN_TEMPERATURE:
        raise RequestError(400, f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {temperature:g}")
    top_k = _number(body, "top_k", settings.top_k, *TOP_K_RANGE, integer=True)
    top_p = _number(body, "top_p", None, MIN_TOP_P, 1.0, integer=False) if openai else None
    max_tokens = _number(body, "max_tokens", settings.max_tokens, *MAX_TOKENS_RANGE, integer=True)
    if openai and body.get("max_completion_tokens") is not None:  # the newer OpenAI spelling
        max_tokens = _number(body, "max_completion_tokens", max_tokens, *MAX_TOKENS_RANGE, integer=True)
    return ChatRequest(clean, float(temperature), top_k, top_p, max_tokens, model, stream)


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


class ClientGone(Exception):
    pass


class WorkerPool:
    """Free workers, and the requests waiting for one (bounded in count and in time), first come first served.

    A released worker is handed straight to the oldest live waiter's future, so a waiter that gives
    up (timeout, client gone, task cancelled) can never lose a worker in flight: it passes the worker on.
    """

    def __init__(self, engines: list, max_queue: int, queue_timeout: float):
        assert engines, "a pool needs at least one engine"
        self.workers = [Worker(i, e) for i, e in enumerate(engines)]
        self.max_queue, self.queue_timeout = max_queue, queue_timeout
        self.waiting = 0
        self.served = 0
        self.cancelled = 0  # generations stopped early because their client went away
        self.abandoned = 0  # requests whose client went away while they waited for a worker
        self._free: list[Worker] = list(reversed(self.workers))
        self._waiters: deque[asyncio.Future] = deque()
        # one thread per worker, apart from the default pool that Starlette uses for sync endpoints
        self.executor = ThreadPoolExecutor(max_workers=len(self.workers), thread_name_prefix="nanochat-worker")

    async def acquire(self, gone: asyncio.Event | None = None) -> Worker:
        """A free worker; PoolBusy when the queue is full or the wait times out, ClientGone if `gone` is set."""
        if self._free:
            worker = self._free.pop()
            worker.busy = True
            return worker
        if self.waiting >= self.max_queue:
            raise PoolBusy(f"server busy: {self.waiting} requests already waiting; retry later")
        if len(self._waiters) > 2 * self.max_queue:  # drop the futures of waiters that gave up
            self._waiters = deque(f for f in self._waiters if not f.done())
        handed = asyncio.get_running_loop().create_future()
        self._waiters.append(handed)
        self.waiting += 1
        watch = [handed] + ([asyncio.ensure_future(gone.wait())] if gone is not None else [])
        try:
            await asyncio.wait(watch, timeout=self.queue_timeout, return_when=asyncio.FIRST_COMPLETED)
            if gone is not None and gone.is_set():
                self.abandoned += 1
                raise ClientGone()
            if not handed.done():
                raise PoolBusy(f"server busy: no worker free within {self.queue_timeout:g} s; retry later")
            return handed.result()
        except BaseException:  # also CancelledError: a worker handed over meanwhile goes to the next waiter
            if handed.done() and not handed.cancelled():
                self._put(handed.result())
            handed.cancel()
            raise
        finally:
            self.waiting -= 1
            for w in watch[1:]:
                w.cancel()

    def _put(self, worker: Worker) -> None:
        while self._waiters:
            handed = self._waiters.popleft()
            if not handed.done():
                worker.busy = True
                handed.set_result(worker)
                return
        worker.busy = False
        self._free.append(worker)

    def release(self, worker: Worker, cancelled: bool = False) -> None:
        worker.served += 1
        self.served += 1
        self.cancelled += cancelled
        self._put(worker)

    def stats(self) -> dict:
        busy = sum(w.busy for w in self.workers)
        return {
            "workers": len(self.workers),
            "busy": busy,
            "free": len(self.workers) - busy,
            "queue_length": self.waiting,
            "requests_served": self.served,
            "requests_cancelled": self.cancelled,
            "requests_abandoned_in_queue": self.abandoned,
            "per_worker": [{"index": w.index, "busy": w.busy, "served": w.served,
                            "device": w.device} for w in self.workers],
        }


class DisconnectWatch:
    """Watches one request's connection from its own task; `gone` is set when the client goes away.

    Starlette does not cancel an endpoint whose client left, and a streamed response only notices when
    a write fails (or never, if the client left before the first write); this notices at once.
    """

    def __init__(self, receive):
        self.gone = asyncio.Event()
        self._on_gone: list[Callable[[], None]] = []
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        for callback in self._on_gone:
            callback()

    def on_gone(self, callback: Callable[[], None]) -> None:
        if self.gone.is_set():
            callback()
        else:
            self._on_gone.append(callback)

    def stop(self) -> None:
        self._task.cancel()


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
    return JSONResponse(error_body(err.message, err.kind), status_code=err.status)


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


class GenerationStream(StreamingResponse):
    """A streamed reply that stops its generation however the response ends (done, failed write, cancelled)."""

    def __init__(self, gen: Generation, watch: DisconnectWatch, events: AsyncIterator[str]):
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.gen, self.watch = gen, watch

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.gen.cancel.set()
            self.watch.stop()


def create_app(engines: list, tokenizer, settings: ServerSettings | None = None) -> RequestGuard:
    """The ASGI app serving `engines` (one worker each): FastAPI behind http_guard.RequestGuard.

    Must be served from one event loop (http_guard.serve adds the connection limits).
    """
    settings = settings or ServerSettings()
    app = FastAPI(title=settings.name, docs_url=None, redoc_url=None, openapi_url=None)
    state: dict[str, WorkerPool] = {}
    started = time.time()
    context = _context_len(engines[0])

    def pool() -> WorkerPool:
        # built lazily so its asyncio objects belong to the loop that serves requests
        if "pool" not in state:
            state["pool"] = WorkerPool(engines, settings.max_queue, settings.queue_timeout)
        return state["pool"]

    async def start(request: Request, openai: bool) -> tuple[Generation, DisconnectWatch]:
        req = parse_chat_request(parse_json_body(await request.body()), settings, openai=openai)
        try:
            prompt = tokenizer.render_for_completion({"messages": req.messages})
        except ValueError as e:  # role order and the like, worded by the tokenizer
            raise RequestError(400, str(e)) from None
        if context is not None:
            if len(prompt) >= context:
                raise RequestError(400, f"conversation is {len(prompt)} tokens; the model reads at most {context}")
            req.max_tokens = min(req.max_tokens, context - len(prompt))
        watch = DisconnectWatch(request.receive)
        try:
            worker = await pool().acquire(watch.gone)
        except PoolBusy as e:
            watch.stop()
            raise RequestError(503, str(e), "server_busy") from None
        except BaseException:  # ClientGone: nobody to answer; or the task was cancelled
            watch.stop()
            raise
        try:
            gen = Generation(pool(), worker, tokenizer, prompt, req)
        except BaseException:  # the worker thread never started: nothing else would release the worker
            pool().release(worker)
            watch.stop()
            raise
        watch.on_gone(gen.cancel.set)
        return gen, watch

    @app.exception_handler(RequestError)
    async def _on_request_error(request: Request, err: RequestError):
        return _error_response(err)

    @app.exception_handler(ClientGone)
    async def _on_client_gone(request: Request, err: ClientGone):
        return JSONResponse(error_body("the client closed the connection"), status_code=408)  # never delivered

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, err: StarletteHTTPException):  # 404, 405 in the API's shape
        return JSONResponse(error_body(str(err.detail)), status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, err: Exception):  # still logged (rate-limited) by uvicorn
        return JSONResponse(error_body(f"internal error: {type(err).__name__}", "server_error"), status_code=500)

    @app.get("/")
    async def index():
        return HTMLResponse(UI_PATH.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "ready": True, "workers": len(engines)}

    @app.get("/config")
    async def config():
        return {"name": settings.name, "model": MODEL_NAME, "auth": settings.api_key is not None,
                "defaults": {"temperature": settings.temperature, "top_k": settings.top_k,
                             "max_tokens": settings.max_tokens}}

    @app.get("/stats")
    async def stats():
        return {**pool().stats(), "uptime_s": round(time.time() - started, 1)}

    @app.post("/chat/completions")
    async def chat(request: Request):
        gen, watch = await start(request, openai=False)

        async def events():
            async for kind, value in gen.pieces():
                if kind == "text":
                    yield _sse({"token": value})
                elif kind == "error":
                    yield _sse({"error": value})
            yield _sse({"done": True})

        return GenerationStream(gen, watch, events())

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request):
        gen, watch = await start(request, openai=True)
        ident, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), gen.req.model

        def chunk(delta: dict, finish: str | None = None) -> str:
            return _sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        if gen.req.stream:
            async def events():
                yield chunk({"role": "assistant", "content": ""})
                async for kind, value in gen.pieces():
                    if kind == "text":
                        yield chunk({"content": value})
                    elif kind == "error":
                        yield _sse(error_body(value, "server_error"))
                    else:
                        yield chunk({}, "stop" if value == "stop" else "length")
                yield "data: [DONE]\n\n"

            return GenerationStream(gen, watch, events())

        parts, finish = [], "length"
        try:
            async for kind, value in gen.pieces():
                if kind == "text":
                    parts.append(value)
                elif kind == "error":
                    return JSONResponse(error_body(value, "server_error"), status_code=500)
                else:
                    finish = "stop" if value == "stop" else "length"
        finally:
            gen.cancel.set()
            watch.stop()
        usage = {"prompt_tokens": len(gen.prompt), "completion_tokens": gen.completion_tokens,
                 "total_tokens": len(gen.prompt) + gen.completion_tokens}
        return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                             "finish_reason": finish}],
                "usage": usage}

    policy = RequestPolicy(api_key=settings.api_key, allowed_origins=set(settings.allowed_origins),
                           max_body_bytes=settings.max_body_bytes, allowed_hosts=settings.allowed_hosts,
                           send_timeout=settings.send_timeout)
    return RequestGuard(app, policy)
