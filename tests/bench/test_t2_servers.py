"""T2 serving benchmark: a server is started in its own process group and always stopped,
children included, also when the code using it fails."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from common import BenchFailed  # noqa: E402
from t2_servers import free_port, server_process  # noqa: E402

# A server that starts a child (as uvicorn workers or a supervisor do), then answers /health.
SERVER = """
import http.server, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[2], "w").write(str(child.pid))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1][0] != "Z"


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.integration
def test_the_whole_group_is_stopped_even_when_the_run_fails(tmp_path: Path) -> None:
    port, child_file = free_port(), tmp_path / "child.pid"
    cmd = [sys.executable, "-c", SERVER, str(port), str(child_file)]
    health = f"http://127.0.0.1:{port}/"
    server = server_process(cmd, tmp_path / "log", health, dict(os.environ))
    with pytest.raises(RuntimeError, match="the benchmark failed"), server as (proc, startup_s):
        assert startup_s > 0 and proc.poll() is None
        child = int(child_file.read_text())
        assert _alive(child)
        raise RuntimeError("the benchmark failed")
    assert proc.poll() is not None
    assert _wait_dead(child), "the server's child outlived the benchmark"


@pytest.mark.integration
def test_a_server_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('cannot load model'); sys.exit(3)"]
    health = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(BenchFailed) as err, server_process(cmd, tmp_path / "log", health, {}):
        pass
    assert "exited 3 while starting" in str(err.value)
    assert "cannot load model" in str(err.value)
