"""The JSON login backend behind nginx's /api/login: 200 for the right user and password, else 401.

nginx cannot inspect a JSON body, so this stdlib server does that one job. It reads the
expected credentials from a file on every request so the servers can change the password
while it runs.

Run as: python json_login.py PORT USERS_FILE (the file holds {"user": "password", …}).
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    users_file: Path

    def do_GET(self) -> None:
        # /ready lets the servers check that the backend is up; a login must be a POST.
        if self.path == "/ready":
            self._answer(200, {"status": "ready"})
        else:
            self._answer(405, {"status": "use POST"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY))
        users = json.loads(self.users_file.read_text())
        try:
            sent: Any = json.loads(body)
        except ValueError:
            sent = None
        ok = (
            isinstance(sent, dict)
            and isinstance(sent.get("username"), str)
            and sent["username"] in users
            and sent.get("password") == users[sent["username"]]
        )
        if ok:
            self._answer(200, {"status": "ok"})
        else:
            self._answer(401, {"status": "unauthorized"})

    def _answer(self, status: int, payload: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request into the servers' log file; never the body (it holds a password).
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    port, users_file = int(sys.argv[1]), Path(sys.argv[2])
    _Handler.users_file = users_file
    with ThreadingHTTPServer(("127.0.0.1", port), _Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
