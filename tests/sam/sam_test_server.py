"""A local HTTP server's handler for the download tests: good, truncated, redirected, huge files."""

from __future__ import annotations

import hashlib
import http.server
import time

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, not a multiple of the chunk size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on purpose (size cap, cancel)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        port = self.server.server_address[1]
        if self.path == "/good.pt":
            self._send(PAYLOAD)
        elif self.path == "/truncated.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/same-host-redirect":
            self._redirect(f"http://127.0.0.1:{port}/good.pt")
        elif self.path == "/other-host-redirect":
            self._redirect(f"http://localhost:{port}/good.pt")
        elif self.path == "/https-elsewhere-redirect":
            self._redirect("https://evil.example.com/sam.pth")
        elif self.path == "/huge-announced":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif self.path == "/huge-unannounced":
            self.send_response(200)
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"x" * 65536)
            self.close_connection = True
        elif self.path == "/slow.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            for i in range(0, len(PAYLOAD), 65536):
                self.wfile.write(PAYLOAD[i:i + 65536])
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()
