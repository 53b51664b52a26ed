"""``make gpu-check`` (benchmarks/gpu_check.py) is prepared for the day a GPU is lent: its ``--dry-run`` runs every
part of it here, on the CPU with tiny shapes, so the script cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_prints_every_row(tiny_root, tmp_path):
    """Run as the GPU machine runs it: ``make gpu-check`` with TRL found through PYTHONPATH (there the wheels of
    ``make gpu-wheels`` are installed into a folder on it; here a copy of the installed TRL), which the target must
    keep: with it replaced by ``.``, the GRPO step was skipped as "TRL is not installed"."""
    import shutil

    import trl

    site = tmp_path / "site"
    shutil.copytree(Path(trl.__file__).parent, site / "trl", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "rows.json"
    run = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "gpu-check", f"GPU_PY={sys.executable}",
                          f"GPU_CHECK_ARGS=--dry-run --json {out}"], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "RMPLUGINS_TINY_DIR": tiny_root, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    checks = [r["check"] for r in rows]
    assert sum(c.startswith("bf16 parity") for c in checks) == 18  # every family, and the 2026 backbones
    assert sum(c.startswith("engine ") for c in checks) == 4  # two shapes, both attention paths
    assert "co-located GRPO step" in checks and "offload" in rows[-1]["value"]
    assert f"TRL {trl.__version__} from {site}" in rows[-1]["value"]
    assert "| check | result | ok | s |" in run.stdout and "NO |" not in run.stdout
    refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert refused.returncode == 2 and "--dry-run" in refused.stderr
