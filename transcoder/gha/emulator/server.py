"""The threaded HTTP/1.1 server that feeds requests to the :class:`App`.

One thread per connection (keep-alive), so parallel block uploads and v1
chunks are served concurrently. A body the handler did not consume closes
the connection instead of corrupting the next request on it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .wire import BadBody, Body, Request, Response, json_response

log = logging.getLogger("transcoder.gha.emulator")

_NO_BODY_STATUSES = (204, 304)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Callable[[Request], Response]) -> None:
        super().__init__(address, Handler)
        self.app = app

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that hang up (timeouts, dropped connections) are normal here.
        log.debug("connection error from %s: %s", client_address, traceback.format_exc(limit=1))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server
    server_version = "transcoder-gha-emulator"
    sys_version = ""
    # Headers and body go out as separate writes; without TCP_NODELAY each
    # small answer waits for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: object) -> None:
        # The request line can hold a SAS signature: log the path only.
        log.debug("%s %s", self.command, self.path.split("?", 1)[0])

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        try:
            body = Body(self.rfile, self.headers)
        except ValueError:
            self._write(json_response(400, {"code": "malformed", "msg": "invalid Content-Length"}))
            self.close_connection = True
            return
        request = Request(self.command, path, query, self.headers, body)
        try:
            response = self.server.app(request)
        except BadBody as exc:
            response = json_response(400, {"code": "malformed", "msg": str(exc)})
            self.close_connection = True
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        except Exception:  # a bug: answer 500 JSON (clients retry) and log it
            log.exception("unhandled error serving %s %s", self.command, path)
            response = json_response(500, {"code": "internal", "msg": "internal emulator error"})
        if response.drop:
            self.close_connection = True
            return
        if not body.done:
            self.close_connection = True
        self._write(response)

    def _write(self, response: Response) -> None:
        self.log_request(response.status)
        self.send_response_only(response.status)
        headers = {"Server": self.server_version, "Date": self.date_time_string(), **response.headers}
        if response.stream is None and response.status not in _NO_BODY_STATUSES:
            headers.setdefault("Content-Length", str(len(response.body)))
        if self.close_connection:
            headers["Connection"] = "close"
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD" or response.status in _NO_BODY_STATUSES:
            return
        try:
            if response.stream is not None:
                for chunk in response.stream:
                    self.wfile.write(chunk)
            else:
                self.wfile.write(response.body)
        except OSError:  # client hung up, or a blob segment vanished mid-read (evicted)
            self.close_connection = True
