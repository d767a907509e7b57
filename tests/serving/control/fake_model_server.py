"""A model server stand-in for supervisor tests: the real command line and health routes,
no model. Starts in a fraction of a second, so crash, liveness and restart tests stay fast.

Its behaviour comes from `<model-dir>/fake.json`:
    {"load_s": 0.3}            /ready answers 503 for that long, then 200
    {"crash": "ValueError: x"} prints a traceback ending in that line and exits 1 at start
    {"score_s": 0.5}           every POST waits that long before answering
    {"listen_s": 5}            waits that long before it listens (a slow import)
`POST /score` answers `{"output": "<served-name> on <port>"}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", action="append", default=[])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-name", default="model")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--parent-pid", type=int)
    p.add_argument("--torch-threads", type=int)
    args = p.parse_args()
    behaviour = json.loads((Path(args.model_dir) / "fake.json").read_text())
    print(f"fake model server for {args.model_dir} on {args.port}", flush=True)
    if behaviour.get("crash"):
        print('Traceback (most recent call last):\n  File "x.py", line 1', flush=True)
        print(behaviour["crash"], flush=True)
        return 1
    time.sleep(float(behaviour.get("listen_s", 0.0)))
    loaded_at = time.monotonic() + float(behaviour.get("load_s", 0.0))
    name = args.served_name

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/ready":
                ok = time.monotonic() >= loaded_at
                self._send(200 if ok else 503, {"ready": ok})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            print(f"scoring {self.path}", flush=True)  # tests count requests in flight here
            time.sleep(float(behaviour.get("score_s", 0.0)))
            self._send(200, {"output": f"{name} on {args.port}"})

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)

    def watch_parent() -> None:
        while True:
            if args.parent_pid and os.getppid() != args.parent_pid:
                os._exit(0)
            time.sleep(0.2)

    threading.Thread(target=watch_parent, daemon=True).start()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
