"""A threaded HTTP server on 127.0.0.1 for tests that drive the real download code.

Each test module scripts its own handler (cuts, errors, listings); starting and stopping the
server is the same everywhere, so it lives here.
"""

import threading
from http.server import ThreadingHTTPServer


def start_server(handler) -> tuple[ThreadingHTTPServer, str]:
    """Serve `handler` on a free port of 127.0.0.1 in a daemon thread; returns (server, base URL)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None  # clients hanging up mid-body are part of these tests
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def stop_server(httpd: ThreadingHTTPServer) -> None:
    httpd.shutdown()
    httpd.server_close()
