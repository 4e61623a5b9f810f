"""Smoke runs of the benchmark scripts: tiny N, a few seconds each.

They check that every bench script runs against real servers over loopback and
writes valid JSON (machine, versions, command and its figures), and that
``bench/report`` renders BENCHMARKS-style Markdown while keeping hand-written
text around its generated block. Timing is never asserted: the benches measure,
CI does not judge the numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def run_script(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def read_result(path: Path) -> dict:
    doc = json.loads(path.read_text())
    for key in ("bench", "when", "command", "machine", "versions"):
        assert key in doc, f"{path.name} lacks {key!r}"
    assert doc["machine"]["cpus"] >= 1
    assert doc["versions"]["aiortc"]
    return doc


def test_load_generator_against_v2v_and_aiortc_echo(tmp_path: Path) -> None:
    run_script([str(BENCH / "load.py"), "--servers", "v2v,aiortc", "--calls", "2", "--seconds", "2",
                "--warmup", "1", "--out-dir", str(tmp_path), "--name", "load"])
    doc = read_result(tmp_path / "load.json")
    for kind in ("v2v", "aiortc"):
        (r,) = doc["runs"][kind]
        assert r["n"] == 2 and r["connected"] == 2, r
        assert r["packets"] > 0 and r["packets_sent"] > 0
        assert isinstance(r["server_cpu_ms_per_call_s"], float)
        assert r["server_rss_mb"] > 0
        assert isinstance(r["good"], bool)


def test_latency_bench_measures_barge_ins_and_truncation(tmp_path: Path) -> None:
    run_script([str(BENCH / "latency.py"), "--barge-ins", "2", "--callers", "1", "--connects", "2",
                "--v2v-calls", "1", "--turn-wav", "speech_en_gb_weather.wav", "--out-dir", str(tmp_path)],
               timeout=180)
    doc = read_result(tmp_path / "latency.json")
    b = doc["barge"]
    assert b["barge_in_cut_ms"]["n"] >= 1, b["errors"]
    # every measured barge-in was matched with the server's truncation log line
    assert b["rows"] and all(row["audio_end_ms"] >= 0 for row in b["rows"])
    assert b["truncation_error_ms"]["n"] >= 1
    assert b["truncation_frame_error_ms"]["n"] == b["truncation_error_ms"]["n"]
    c = doc["connect"]
    assert c["offer_to_answer_ms"]["n"] == 2
    assert c["v2v_call"]["runs"] and "connected_s" in c["v2v_call"]["runs"][0]
    assert len(doc["codec_span_bias_ms"]) == 3


def test_churn_and_ab_and_report(tmp_path: Path) -> None:
    run_script([str(BENCH / "churn.py"), "--calls", "6", "--concurrency", "3", "--sample-every", "3",
                "--warm", "3", "--out-dir", str(tmp_path)])
    churn = read_result(tmp_path / "churn.json")
    assert [s["calls"] for s in churn["samples"]] == [0, 3, 6]
    assert churn["error_count"] == 0
    assert churn["samples"][-1]["active_calls"] == 0

    run_script([str(BENCH / "optimise.py"), "--name", "smoke", "--before", "uvloop=0", "--after", "-",
                "--calls", "1", "--repeat", "1", "--seconds", "1", "--warmup", "0.5", "--out-dir", str(tmp_path)])
    opt = read_result(tmp_path / "opt_smoke.json")
    assert len(opt["runs"]["before"]) == 1 and len(opt["runs"]["after"]) == 1

    out = tmp_path / "BENCH.md"
    out.write_text("# Benchmarks\n\nHand-written intro.\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\n## Appended by hand\n")
    run_script([str(BENCH / "report"), "--results", str(tmp_path), "--out", str(out), "--no-plot"])
    md = out.read_text()
    assert "Hand-written intro." in md and "## Appended by hand" in md and "\nold\n" not in md
    assert "### Churn" in md and "Optimisations" in md
