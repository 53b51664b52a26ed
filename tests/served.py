"""A real ``rmplugins serve`` process for tests, on a port the operating system picks.

The server gets ``--port 0`` and the test reads the port from its log ("serving on http://..."): a port found free
beforehand can be taken by the other test worker before the server binds it (a fresh-clone run failed so).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

SERVING_ON = re.compile(r"serving on (http://[^\s:]+:(\d+))")


def sigint_as_a_terminal_delivers_it() -> None:
    """``preexec_fn`` of a child whose Ctrl-C a test checks: a suite started in the background by a shell without job
    control (nohup, ``cmd &`` in a script, CI runners) inherits SIGINT ignored, and Python keeps it ignored in every
    child, so a server stopped by SIGINT exited 0 instead of 130 (uvicorn re-raises the signal it handled)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def rmplugins_serve(args: list[str], env: dict | None = None, timeout: float = 180.0):
    """Start ``python -m rmplugins serve *args --port 0``, wait until ``/health`` answers, and yield
    ``(process, url, log_lines)``; the log lines keep growing while the server runs (a thread drains stderr, so
    the pipe never fills). The process is killed on the way out if it still runs."""
    assert "--port" not in args, "the port is picked by the operating system (--port 0)"
    server = subprocess.Popen([sys.executable, "-m", "rmplugins", "serve", *args, "--port", "0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              preexec_fn=sigint_as_a_terminal_delivers_it)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout

        def alive():
            assert server.poll() is None, "the server exited:\n" + "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "the server did not come up:\n" + "".join(lines)[-3000:]

        while not (found := [m for line in list(lines) if (m := SERVING_ON.search(line))]):
            alive()
            time.sleep(0.1)
        url = found[0].group(1)
        while True:  # the port is bound from the start; uvicorn answers once it runs
            alive()
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except urllib.error.HTTPError as e:  # behind an API key /health still answers; anything else is wrong
                raise AssertionError(f"/health answered {e.code}") from e
            except OSError:
                time.sleep(0.2)
        yield server, url, lines
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        reader.join(timeout=10)
