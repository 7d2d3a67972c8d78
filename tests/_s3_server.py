"""An S3-compatible server on loopback for the object-storage tests: moto's, in a process of its
own, as s3fs's tests run it.

Usage: python tests/_s3_server.py   (prints the port, then serves until stdin closes)

Requests are served one at a time (a lock around moto's application): moto checks a
conditional put (``If-None-Match: *``) and then stores the object, so two puts served at once
could both pass the check; S3 itself makes the check and the put one step. The server exits
when its parent closes the pipe to it (or dies), so it never outlives the tests.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


class Serialized:
    """A WSGI application that serves one request at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self.lock:
            return list(self.app(environ, start_response))


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    app = Serialized(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(server.server_port, flush=True)

    def exit_with_parent() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
