"""What a broken or hostile HTTP client can hold on the chat server, and for how long.

    app = RequestGuard(fastapi_app, RequestPolicy(api_key="...", max_body_bytes=1 << 20))
    serve(app, host, port, ConnectionLimits.within_fd_limit(256))   # guarded protocol, quiet logs

- GuardedH11Protocol (uvicorn's h11 protocol, extended): a client must deliver a complete request
  head within `header_timeout` of connecting or of its previous response, so connections that say
  nothing, or trickle a header a byte at a time, are closed; open connections are capped below the
  process's file-descriptor limit, and a new connection past the cap evicts the longest-idle
  connection with no request in flight (or is closed at once when all are busy). Without the cap,
  running out of descriptors makes asyncio's accept loop log one traceback per pending connection
  per loop tick (its `_accept_connection` keeps looping after EMFILE, CPython 3.11).
- RequestGuard (pure ASGI, outermost): refuses, before any body byte is read, what the app never
  serves: a Host name it does not answer to (loopback only), cross-origin writes (a page on another
  site POSTing to this port), non-JSON POSTs (the only kind a page can send cross-origin without a
  CORS preflight), a missing or wrong API key, and bodies past the cap (by Content-Length, or
  counted as they stream in). Errors are the API's JSON. It also ends a response whose client has
  stopped reading (a write blocked for send_timeout); the protocol then resets that connection.
- RepeatFilter: a logging filter that lets a few copies of the same message through per interval
  and counts the rest, so no failure mode can write megabytes of identical tracebacks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import resource
import socket
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

FD_RESERVE = 16  # descriptors kept free for the process itself (logs, checkpoint files, the loop)
MAX_BACKLOG = 2048  # uvicorn's default listen backlog


@dataclass
class ConnectionLimits:
    max_connections: int = 256  # open client connections; past it an idle one is evicted
    backlog: int = MAX_BACKLOG  # pending connections in the kernel; also how many asyncio accepts per tick
    header_timeout: float = 10.0  # seconds to deliver a complete request head
    keep_alive: int = 5  # seconds an idle keep-alive connection is kept (uvicorn's timeout_keep_alive)
    max_header_bytes: int = 16 * 1024  # request line + headers (uvicorn's h11_max_incomplete_event_size)
    close_grace: float = 5.0  # seconds a closed connection may take to flush its output before it is reset

    @classmethod
    def within_fd_limit(cls, max_connections: int, **kw) -> ConnectionLimits:
        """Limits that keep this process under its RLIMIT_NOFILE: the open connections, plus two
        ticks' worth of accepted ones (asyncio accepts up to `backlog` per tick before any protocol
        runs, and an evicted connection's descriptor is released a tick after the eviction, while
        the next tick already accepts again)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return cls(max_connections=max_connections, **kw)
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:  # no procfs (macOS): assume a freshly started interpreter with a model loaded
            in_use = 64
        spare = max(16, soft - in_use - FD_RESERVE)
        if spare >= max_connections + 2 * MAX_BACKLOG:
            return cls(max_connections=max_connections, **kw)
        cap = max(4, min(max_connections, spare // 2))
        return cls(max_connections=cap, backlog=max(4, min(MAX_BACKLOG, (spare - cap) // 2)), **kw)


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (what nginx's worker_rlimit_nofile does); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # some sandboxes refuse; the cap below still follows the real limit
            pass
    return soft


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a cap on open connections.

    `limits` is set on a subclass by `protocol_class(limits)`; uvicorn builds one instance per connection.
    """

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_ResettingTransport(transport, self.limits.close_grace))
        self._deadline: asyncio.TimerHandle | None = None
        self.idle_since = time.monotonic()
        self._sync_deadline()
        open_now = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_now) > self.limits.max_connections:
            idle = [c for c in open_now if c is not self and isinstance(c, GuardedH11Protocol) and c.is_idle()]
            if idle:
                min(idle, key=lambda c: c.idle_since).close_idle()
            else:  # every connection has a request in flight: this one waits for nothing, so it goes
                transport.close()

    def is_idle(self) -> bool:
        """No request in flight: before the first request head, or between keep-alive requests."""
        return self.cycle is None or self.cycle.response_complete

    def close_idle(self) -> None:
        if not self.transport.is_closing():
            if self.conn.our_state in (h11.IDLE, h11.DONE):
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
            self.transport.close()

    def _sync_deadline(self) -> None:
        """Arm the head deadline while the connection is idle; disarm it once a request is in flight."""
        if not self.is_idle():
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
        elif self._deadline is None and not self.transport.is_closing():
            self.idle_since = time.monotonic()
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.is_idle():
            self.close_idle()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._sync_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


class _ResettingTransport:
    """A transport whose close() resets the connection if its output is still unsent after `grace` seconds.

    asyncio's close() waits for the write buffer to drain before it lets go of the socket, so a client
    that stops reading would keep the descriptor (and its buffered reply) forever.
    """

    def __init__(self, transport: asyncio.Transport, grace: float):
        self._transport, self._grace = transport, grace

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        self._transport.close()
        if self._transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(self._grace, self._abort_if_unsent)

    def _abort_if_unsent(self) -> None:
        if self._transport.get_write_buffer_size():
            sock = self._transport.get_extra_info("socket")
            if sock is not None:  # linger 0: a reset, so the kernel drops the unread reply too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class RepeatFilter(logging.Filter):
    """Pass the first `burst` records of each kind per `interval` seconds; count and summarize the rest.

    A kind is (logger, message template, exception type). The first record let through after some were
    dropped says how many were. Attach one instance to several handlers: each record is decided once.
    """

    def __init__(self, burst: int = 5, interval: float = 60.0):
        super().__init__()
        self.burst, self.interval = burst, interval
        self._seen: dict[tuple, list] = {}  # kind -> [window start, passed in window, dropped since last pass]

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_repeat_filter", None)
        if decided is not None:
            return decided
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        kind = (record.name, str(record.msg), exc_type)
        now = time.monotonic()
        state = self._seen.get(kind)
        if state is None or now - state[0] >= self.interval:
            state = self._seen[kind] = [now, 0, state[2] if state else 0]
            if len(self._seen) > 1000:  # bounded memory whatever the messages
                self._seen = {kind: state}
        ok = state[1] < self.burst
        if ok:
            state[1] += 1
            if state[2]:
                record.msg = f"{record.msg} [{state[2]} more like this were not logged]"
                state[2] = 0
        else:
            state[2] += 1
        record._repeat_filter = ok
        return ok


def quiet_repeats(filt: RepeatFilter | None = None) -> RepeatFilter:
    """Attach a RepeatFilter to every handler of the root and uvicorn loggers (after uvicorn set them up)."""
    filt = filt or RepeatFilter()
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"):
        for handler in logging.getLogger(name).handlers:
            if filt not in handler.filters:
                handler.addFilter(filt)
    return filt


def serve(app, host: str, port: int, limits: ConnectionLimits, log_level: str = "warning") -> None:
    """Run `app` with uvicorn on the guarded protocol until interrupted."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol_class(limits),
                            backlog=limits.backlog, timeout_keep_alive=limits.keep_alive,
                            h11_max_incomplete_event_size=limits.max_header_bytes)
    quiet_repeats()  # uvicorn.Config has installed its handlers by now
    uvicorn.Server(config).run()


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    """The API's error shape (OpenAI's): {"error": {"message", "type", "code"}}."""
    return {"error": {"message": message, "type": kind, "code": code}}


@dataclass
class RequestPolicy:
    api_key: str | None = None  # required as `Authorization: Bearer KEY` on every path but the open ones
    open_paths: tuple[str, ...] = ("/", "/health", "/config", "/favicon.ico")  # GET without a key
    allowed_origins: set[str] = field(default_factory=set)  # besides the server's own (Host header)
    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0  # seconds to receive the whole body once the headers are in
    send_timeout: float = 30.0  # seconds one write of the response may wait for the client to read
    # host names the Host header may carry (None = any). A server bound to loopback takes only its
    # loopback names: a page whose own name an attacker re-points at 127.0.0.1 (DNS rebinding) is
    # same-origin to the browser, so only the Host header tells it apart
    allowed_hosts: set[str] | None = None


class Refused(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def same_origin(origin: str, scope, allowed: set[str]) -> bool:
    """Whether a browser's Origin header names this server (as the client addressed it) or an allowed origin.

    Browsers send Origin on every cross-origin request and on same-origin POSTs; the UI's own fetches
    carry this server's origin, so its host:port equals the request's Host (or X-Forwarded-Host behind
    a proxy that rewrites Host).
    """
    if origin in allowed:
        return True
    netloc = urlsplit(origin).netloc.lower()
    if not netloc:  # "null": sandboxed frames, file:// pages
        return False
    hosts = {(_header(scope, b"host") or "").lower()}
    forwarded = _header(scope, b"x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip().lower())
    return netloc in hosts


class RequestGuard:
    """Pure ASGI middleware: the checks every request passes before the app sees it (see module doc)."""

    def __init__(self, app, policy: RequestPolicy):
        self.app, self.policy = app, policy
        self._sending: dict[asyncio.Task, list] = {}  # request task -> [loop time its pending send began]
        self._stalled: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_head(scope)
            if scope["method"] == "POST":
                body = await self._read_body(scope, receive)
                if body is None:  # the client left while sending
                    return
                receive = _replay(body, receive)
        except Refused as r:
            # Connection: close, since the rest of an unread body is not worth draining
            payload = json.dumps(error_body(r.message, code=r.code)).encode()
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        await self._run_watched(scope, receive, send)

    async def _run_watched(self, scope, receive, send) -> None:
        """Run the app; a send blocked longer than send_timeout (a client that stopped reading, or whose
        network vanished without a FIN) cancels the request, which closes the connection."""
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        pending: list = [None]

        async def timed_send(message) -> None:
            pending[0] = loop.time()
            try:
                await send(message)
            finally:
                pending[0] = None

        self._sending[task] = pending
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        try:
            await self.app(scope, receive, timed_send)
        except asyncio.CancelledError:
            if task not in self._stalled:
                raise
            # returning with the response unfinished makes uvicorn close the connection
            log.warning("closed a connection whose client read nothing for %g s", self.policy.send_timeout)
        finally:
            del self._sending[task]
            self._stalled.discard(task)

    async def _sweep(self) -> None:
        try:
            while self._sending:
                await asyncio.sleep(min(1.0, self.policy.send_timeout / 4))
                now = asyncio.get_running_loop().time()
                for task, pending in list(self._sending.items()):
                    if pending[0] is not None and now - pending[0] > self.policy.send_timeout:
                        self._stalled.add(task)
                        task.cancel()
        finally:
            self._sweeper = None

    def _check_head(self, scope) -> None:
        policy, method = self.policy, scope["method"]
        if policy.allowed_hosts is not None:
            host = urlsplit("//" + (_header(scope, b"host") or "")).hostname or ""
            if host not in policy.allowed_hosts:
                raise Refused(403, f"unexpected Host {host[:100]!r}: this server answers to "
                                   f"{', '.join(sorted(policy.allowed_hosts))} only (it listens on loopback)")
        origin = _header(scope, b"origin")
        if method not in ("GET", "HEAD") and origin is not None and not same_origin(origin, scope,
                                                                                    policy.allowed_origins):
            raise Refused(403, f"cross-origin request from {origin[:100]} refused: use the page this server "
                               "serves, or a client that sends no Origin header")
        if policy.api_key is not None and not (method in ("GET", "HEAD") and scope["path"] in policy.open_paths):
            auth = _header(scope, b"authorization") or ""
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), policy.api_key.encode()):
                raise Refused(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' "
                                   "(the OpenAI client's api_key)", code="invalid_api_key")
        length = _header(scope, b"content-length")
        if length is not None and int(length) > policy.max_body_bytes:  # h11 has checked it is digits
            raise Refused(413, f"request body of {length} bytes is over the {policy.max_body_bytes}-byte limit")
        if method == "POST":
            media = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if media != "application/json":
                raise Refused(415, f"the body must be JSON sent with Content-Type: application/json, "
                                   f"got {media[:60] or 'none'!r}")

    async def _read_body(self, scope, receive) -> bytes | None:
        limit = self.policy.max_body_bytes

        async def read() -> bytes | None:
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:  # a chunked body has no Content-Length to check up front
                    raise Refused(413, f"request body is over the {limit}-byte limit")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)

        try:
            # wait_for (not asyncio.timeout) keeps Python 3.10 working
            return await asyncio.wait_for(read(), self.policy.body_timeout)
        except asyncio.TimeoutError:
            raise Refused(408, f"request body not received within {self.policy.body_timeout:g} s") from None


def _replay(body: bytes, receive):
    """A receive that hands the app the already-read body, then passes through (disconnect events)."""
    pending = [body]

    async def replayed():
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed


LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
