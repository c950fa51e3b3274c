"""A threaded HTTP server on 127.0.0.1 (a free port) that runs for the length of a with-block;
the fake model and fake NCBI servers of the tests build on it."""
from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LocalServer:
    def serve(self, handler) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
