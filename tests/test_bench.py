"""The benchmark command runs and writes its report; timings are not asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["serve_ready_ms", "link_overhead_us", "spawn_ready_ms"]


def test_bench_quick_writes_a_report(tmp_path):
    report_file = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "bench", "--quick", "--only", ",".join(KEYS),
         "--json", str(report_file)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    report = json.loads(report_file.read_text())
    assert report["machine"]["cpu_count"] >= 1
    assert report["date"]
    for key in KEYS:
        entry = report[key]
        assert isinstance(entry["value"], (int, float)), (key, entry)
        assert isinstance(entry["met"], bool), (key, entry)
        assert {"baseline", "target", "unit", "note"} <= set(entry)
        assert key in done.stdout  # the table names every metric measured


def test_bench_rejects_an_unknown_metric():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "labkit", "bench", "--only", "no_such_metric"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "no_such_metric" in done.stderr


def test_grading_metrics_are_opt_in_and_accepted_by_the_parser():
    """Listed and parsed, never run here: grading a class takes minutes (grading is tested elsewhere)."""
    import argparse

    from labkit import bench

    grading = {"grading_ratio", "grading_speedup", "grading_shards_extra_pct"}
    assert grading <= set(bench.METRICS)
    assert bench.OPT_IN == grading | {"notebook_kernel_peak_mb", "notebook_kernel_cpu_s"}
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--quick", "--only", "grading_ratio", "--class-size", "3"])
    assert (args.only, args.class_size, args.quick) == ("grading_ratio", 3, True)
    assert bench.selected(["grading_ratio", "grading_speedup"], class_size=3) == ["grading_ratio", "grading_speedup"]
    # The default run leaves them out, and its table says how to ask for them.
    default = bench.selected()
    assert not bench.OPT_IN & set(default) and set(default) | bench.OPT_IN == set(bench.METRICS)
    report = {"machine": {"cpu_count": 2, "python": "3", "date": ""}, "date": "today", "quick": True, "seconds": 1.0}
    assert "--only grading_ratio,grading_speedup" in bench.table(report)
