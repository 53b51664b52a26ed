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


def _bench_common():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_floor_counts_every_distinct_prefix_and_every_key_it_sees():
    """The fractions of the peak that bench_limit and gpu_check print are over these FLOPs. Counted here the slow
    way: every distinct prefix is one token a perfect plan runs, attending to as many keys as the prefix is long.
    (An earlier estimate scaled each sequence's causal pairs by floor / total tokens and missed 31 % of the
    attention of bench_limit's workload: a continuation sees its whole prompt.)"""
    from types import SimpleNamespace

    from hypothesis import given, settings
    from hypothesis import strategies as st

    floor_flops = _bench_common().floor_flops
    config = SimpleNamespace(hidden_size=8, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                             head_dim=4, intermediate_size=12)  # heads x head_dim (16) != hidden (8), as Qwen3's
    per_token = 2 * 8 * 16 + 2 * 8 * 8 + 3 * 8 * 12  # q and o, k and v, the gated MLP

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=8))
    def check(seqs):
        prefixes = {tuple(s[:i + 1]) for s in seqs for i in range(len(s))}
        pairs = sum(len(p) for p in prefixes)
        floor, flops = floor_flops(config, seqs, last_layer_at_reads=False)
        assert floor == len(prefixes)
        assert flops == 2 * 3 * per_token * floor + 4 * 3 * pairs * 16
        distinct = {tuple(s) for s in seqs}
        _, cut = floor_flops(config, seqs)  # the last layer: keys and values everywhere, the rest at the reads
        last_full = 2 * per_token * floor + 4 * pairs * 16
        last_cut = (2 * (2 * 8 * 8) * floor + 2 * (2 * 8 * 16 + 3 * 8 * 12) * len(distinct)
                    + 4 * sum(map(len, distinct)) * 16)
        assert cut == flops - last_full + last_cut

    check()
