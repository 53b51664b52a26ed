"""Every benchmark script still imports and parses its options (one the suite never ran, ``bench_soak.py``, had
imported names a refactor removed), and its ``--help`` explains every option."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if "def main(" in p.read_text())

# In a process of its own: the scripts put benchmarks/ on sys.path and import their helpers by plain names.
CHECK = r"""
import argparse, contextlib, importlib, io, json, sys
sys.path[:0] = [sys.argv[1] + "/benchmarks", sys.argv[1]]
unexplained, failed = {}, {}
add = argparse.ArgumentParser.add_argument
def recording(self, *names, **kw):
    if kw.get("help") is None and any(n.startswith("--") for n in names):
        unexplained.setdefault(current, []).append(names[0])
    return add(self, *names, **kw)
argparse.ArgumentParser.add_argument = recording
for current in sys.argv[2:]:
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            importlib.import_module(current).main(["--help"])
        failed[current] = "main(['--help']) returned instead of exiting"
    except SystemExit as done:
        if done.code not in (0, None) or "usage:" not in out.getvalue():
            failed[current] = f"exit {done.code}"
    except Exception as err:
        failed[current] = f"{type(err).__name__}: {err}"
print(json.dumps({"unexplained": unexplained, "failed": failed}))
"""


def test_every_benchmark_parses_its_options_and_explains_them():
    assert {"bench_limit", "bench_soak", "bench_server", "gpu_check"} <= set(SCRIPTS)
    run = subprocess.run([sys.executable, "-c", CHECK, str(ROOT), *SCRIPTS], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    assert result["unexplained"] == {}
