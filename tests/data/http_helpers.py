"""A real HTTP server on 127.0.0.1 (http.server in a thread) serving a shard folder, with
faults on request: a 500, a connection cut mid-body, a flipped byte, a stall."""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        server: ShardServer = self.server.owner
        name = os.path.basename(self.path.split("?", 1)[0])
        with server.lock:
            server.requests[name] += 1
            plan = server.faults.get(name)
            fault = plan.pop(0) if plan else None
        if fault == "500":
            self.send_error(500, "injected")
            return
        path = self.translate_path(self.path)
        if fault is None or not os.path.isfile(path):
            return super().do_GET()
        body = bytearray(open(path, "rb").read())
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "flip":
            body[len(body) // 3] ^= 0xFF
            self.wfile.write(bytes(body))
        elif fault in ("cut", "stall"):
            self.wfile.write(bytes(body[: len(body) // 2]))
            self.wfile.flush()
            if fault == "stall":
                time.sleep(server.stall_s)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True


class ShardServer:
    """`with ShardServer(folder) as srv:` → srv.url; srv.faults["shard-000001.tar"] = ["500", "cut"]
    makes the next two requests of that file fail in those ways; srv.requests counts requests.
    `port`: 0 picks a free one; a server started again on an old one brings its URL back."""

    def __init__(self, root: str, stall_s: float = 5.0, port: int = 0):
        self.root, self.stall_s, self.port = root, stall_s, port
        self.faults: dict[str, list[str]] = {}
        self.requests: Counter = Counter()
        self.lock = threading.Lock()

    def __enter__(self) -> ShardServer:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), partial(_Handler, directory=self.root))
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
