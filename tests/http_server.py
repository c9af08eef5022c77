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


def file_handler(files: dict, requests: list | None = None, content_type: str | None = None):
    """A handler class serving `files` ({path: bytes}, read at request time so tests may change it) and
    404 for anything else; each requested path is appended to `requests` when given."""
    from http.server import BaseHTTPRequestHandler

    class Files(BaseHTTPRequestHandler):
        def do_GET(self):
            if requests is not None:
                requests.append(self.path)
            data = files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Files
