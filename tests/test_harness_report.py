"""benchmarks/harness_report.py: medians, per-repeat ratio spread, roofline, markdown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from harness_report import main as render_main
from harness_report import markdown, summarise, targets


def _run(backend: str, repeat: int, rate: float, layout: str = "batch 2048") -> dict:
    return {"backend": backend, "precision": "amx_int8", "layout": layout, "repeat": repeat,
            "samples_per_s": rate, "latency_ms": {"p50": rate / 1000, "p99": rate / 500},
            "loadavg_1m": 1.0}


RUNS = [{**_run("native", 0, 1000.0), "kernels": {"interaction": "fused C kernel"},
         "tables": {"memory": "hugepages", "detail": "hugetlbfs /dev/hugepages, ..."}},
        {**_run("native-unfused", 0, 500.0), "kernels": {"interaction": "torch ops"},
         "tables": {"memory": "normal", "detail": "not on hugepages: ..."}},
        _run("ipex", 0, 2000.0), _run("native", 1, 1200.0),
        _run("ipex", 1, 1500.0), _run("native", 2, 900.0), _run("ipex", 2, 1800.0),
        {"backend": "ipex", "precision": "amx_int8", "layout": "batch 1", "repeat": 0,
         "error": "exit 1: boom"}]
PEAKS = {"amx_int8": {"peak_gflops": 1000.0, "best": "qlinear @2048"}}


def test_summary_medians_ratio_spread_and_roofline() -> None:
    rows = summarise(RUNS, PEAKS, flops_per_sample=1_000_000)
    row = rows[0]
    assert row["backends"]["native"]["samples_per_s_median"] == 1000.0
    assert row["backends"]["ipex"]["samples_per_s_median"] == 1800.0
    ratio = row["native_over_ipex"]
    assert ratio["per_repeat"] == pytest.approx([0.5, 0.8, 0.5])
    assert (ratio["min"], ratio["median"], ratio["max"]) == pytest.approx((0.5, 0.5, 0.8))
    # 1000 samples/s x 1 MFLOP = 1 GFLOP/s of a 1000 GFLOP/s peak
    assert row["backends"]["native"]["roofline_fraction"] == pytest.approx(1e-3)
    assert rows[1]["errors"] == {"ipex": ["exit 1: boom"]} and "native_over_ipex" not in rows[1]


def test_markdown_has_the_table_latency_peaks_and_failures() -> None:
    doc = {"machine": {"cpu_model": "Xeon", "physical_cores": 2, "isa_flags": ["amx_int8"],
                       "logical_cpus": 2},
           "parameters": {"preset": "tiny", "threads": 2, "repeats": 3,
                          "backends": ["native", "ipex"]},
           "venvs": {"native": {"torch": "2.13.0"},
                     "ipex": {"torch": "2.8.0", "intel-extension-for-pytorch": "2.8.0"}},
           "when": "now", "total_s": 60.0, "peaks": PEAKS, "runs": RUNS,
           "summary": summarise(RUNS, PEAKS, 1_000_000)}
    text = markdown(doc)
    assert "| amx_int8 | batch 2048 | 1,000 | 1,800 | 0.500 [0.500–0.800] | 0.1% | 0.2% |" in text
    assert "| amx_int8 | 1,000.0 | qlinear @2048 |" in text
    assert "Failures: amx_int8 batch 1 ipex: exit 1: boom" in text
    assert "IPEX 2.8.0" in text
    assert ("Native kernels: amx_int8: interaction = fused C kernel; "
            "amx_int8 (native-unfused): interaction = torch ops") in text
    assert "Embedding tables: native: hugepages; native-unfused: normal" in text
    assert "Not AMX figures" not in text
    doc["machine"].update(isa_flags=["avx512f"], cpu_flags_override="avx512f amx_tile amx_int8")
    assert "**Not AMX figures:** the CPU flags were overridden" in markdown(doc)


def test_backends_take_turns_going_first() -> None:
    from harness import backend_order

    backends = ["native", "native-unfused", "ipex"]
    orders = [backend_order(backends, repeat) for repeat in range(4)]
    assert [order[0] for order in orders] == ["native", "native-unfused", "ipex", "native"]
    assert all(sorted(order) == sorted(backends) for order in orders)
    assert orders[1] == ["native-unfused", "ipex", "native"]


def test_variants_pass_their_run_flags() -> None:
    from harness import VARIANTS, run_flags

    assert run_flags("native-normal-tables") == ["--table-memory", "normal"]
    assert run_flags("native") == [] and run_flags("ipex") == []
    assert {backend for backend, _env, _flags in VARIANTS.values()} == {"native", "ipex"}


def test_sharing_windows_follow_the_last_rate_of_their_variant() -> None:
    from harness import FIRST_SHARING_STEPS, parse_args, sharing_steps

    args = parse_args(["--backends", "native", "--target-seconds", "2"])
    assert sharing_steps(args, [], "native", "avx_int8") == FIRST_SHARING_STEPS
    earlier = [
        {"layout": "sharing 2x1 core, batch 16", "backend": "native", "precision": "avx_int8",
         "samples_per_s": 80_000.0, "instances": 2},
        {"layout": "sharing 2x1 core, batch 16", "backend": "ipex", "precision": "avx_int8",
         "samples_per_s": 8_000.0, "instances": 2},
        {"layout": "batch 2048", "backend": "native", "precision": "avx_int8",
         "samples_per_s": 1e6},
    ]
    # 40,000 samples/s per instance, 2 s, batches of 16
    assert sharing_steps(args, earlier, "native", "avx_int8") == 5_000
    assert sharing_steps(args, earlier, "ipex", "avx_int8") == 1_000  # the floor
    assert sharing_steps(args, earlier, "native", "avx_fp32") == FIRST_SHARING_STEPS
    fixed = parse_args(["--backends", "native", "--sharing-steps", "300"])
    assert sharing_steps(fixed, earlier, "native", "avx_int8") == 300


def _paired_doc(runs: list[dict], repeats: int) -> dict:
    """A harness document around paired runs: 3 slices per repeat, native and IPEX."""
    return {"machine": {"cpu_model": "Xeon", "physical_cores": 2, "isa_flags": [],
                        "logical_cpus": 2},
            "parameters": {"preset": "tiny", "threads": 2, "repeats": repeats,
                           "paired_slices": 3, "backends": ["native", "ipex"]},
            "venvs": {}, "when": "now", "total_s": 60.0, "peaks": PEAKS, "runs": runs,
            "summary": summarise(runs, PEAKS, 1_000_000)}


def test_paired_windows_give_one_ratio_per_slice() -> None:
    runs = [{**_run("native", 0, rate, "paired batch 2048"), "slice": k}
            for k, rate in enumerate((1300.0, 1100.0, 1250.0))]
    runs += [{**_run("ipex", 0, rate, "paired batch 2048"), "slice": k}
             for k, rate in enumerate((1000.0, 1000.0, 500.0))]
    runs += [{**_run("native", 1, 1400.0, "paired batch 2048"), "slice": 0},
             {**_run("ipex", 1, 1000.0, "paired batch 2048"), "slice": 0}]
    row = summarise(runs, PEAKS, 1_000_000)[0]
    ratio = row["native_over_ipex"]
    assert ratio["per_repeat"] == pytest.approx([1.3, 1.1, 2.5, 1.4])
    assert (ratio["min"], ratio["median"], ratio["max"]) == pytest.approx((1.1, 1.35, 2.5))
    assert row["backends"]["native"]["repeats"] == 4
    text = markdown(_paired_doc(runs, repeats=2))
    assert "| amx_int8 | paired batch 2048 | 1,275 | 1,000 | 1.350 [1.100–2.500] |" in text
    assert "taking turns (3 per backend and repeat)" in text
    assert "over the GEMM peak" not in text
    assert "Their roofline is over the run's start / end peak below." in text


def test_paired_roofline_divides_each_window_by_the_peak_measured_after_it() -> None:
    runs = [{**_run("native", 0, rate, "paired batch 2048"), "slice": k}
            for k, rate in enumerate((1000.0, 1200.0, 900.0))]
    runs += [{**_run("ipex", 0, 500.0, "paired batch 2048"), "slice": k} for k in range(3)]
    runs += [{"backend": "peak", "precision": "amx_int8", "layout": "paired batch 2048",
              "repeat": 0, "slice": k, "kernel": "tiles @1024", "peak_gflops": peak,
              "error": None} for k, peak in enumerate((1000.0, 2000.0, 500.0))]
    row = summarise(runs, PEAKS, 1_000_000)[0]
    # windows over their peaks: 1000/1000, 1200/2000, 900/500 GFLOP/s x 1e-3
    assert row["backends"]["native"]["roofline_fraction"] == pytest.approx(1e-3)
    assert row["backends"]["ipex"]["roofline_fraction"] == pytest.approx(0.5e-3)
    assert row["paired_peak_gflops"] == {"median": 1000.0, "min": 500.0, "max": 2000.0}
    assert set(row["backends"]) == {"native", "ipex"} and "errors" not in row
    assert ("peak measured right after it in the native worker: amx_int8 (median 1,000.0, "
            "500.0-2,000.0).") in markdown(_paired_doc(runs, repeats=1))


def test_paired_slices_alternate_which_backend_goes_first() -> None:
    from harness import paired_order, parse_args

    assert [paired_order(["native", "ipex"], k) for k in range(3)] == [
        ["native", "ipex"], ["ipex", "native"], ["native", "ipex"]]
    assert parse_args(["--paired-slices", "4"]).paired_slices == 4
    assert parse_args(["--paired-only"]).paired_only
    for bad in (["--paired-only", "--backends", "native"],
                ["--paired-only", "--paired-slices", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_a_served_worker_answers_timed_windows_until_told_to_quit(tmp_path: Path) -> None:
    import json

    from harness import ServedWorker, base_env, parse_args, worker_cmd

    args = parse_args(["--preset", "tiny", "--backends", "native", "--threads", "1",
                       "--warmup-seconds", "0.3"])
    plan = [[64, 2, 3, 0.05, 50]]
    out = tmp_path / "served.json"
    worker = ServedWorker(worker_cmd(args, "native", "avx_fp32", plan, tmp_path, out,
                                     serve=True), base_env(1), tmp_path / "served.log")
    try:
        ready = worker.answer(300)
        # warmed up for the seconds asked, not just the plan's 2 steps (a few ms here)
        assert ready["ready"] is True and ready["warmup_s"] >= 0.3
        windows = [worker.request({"seconds": 0.05}, 120) for _ in range(2)]
        peak = worker.request({"peak": {"kernel": "torch.mm fp32", "n": 256,
                                        "seconds": 0.05}}, 120)
        missing = worker.request({"peak": {"kernel": "no such", "n": 256, "seconds": 0.05}}, 120)
    finally:
        worker.close()
    assert worker.proc.returncode == 0, (tmp_path / "served.log").read_text()[-2000:]
    assert peak["peak_gflops"] > 0 and peak["kernel"] == "torch.mm fp32"
    assert "no kernel 'no such'" in missing["error"]
    for window in windows:
        assert window["batch_size"] == 64 and 3 <= window["steps"] <= 50
        assert window["throughput_samples_per_s"] > 0
    assert [r["steps"] for r in json.loads(out.read_text())["runs"]] == [
        w["steps"] for w in windows]


def test_a_served_worker_that_dies_or_hangs_is_an_error_not_a_hang(tmp_path: Path) -> None:
    import os

    from harness import ServedWorker

    env = dict(os.environ)
    dead = ServedWorker([sys.executable, "-c", "import sys; sys.exit(3)"], env,
                        tmp_path / "dead.log")
    with pytest.raises(RuntimeError, match="exited 3"):
        dead.answer(60)
    with pytest.raises(RuntimeError, match="exited 3"):  # writing to it does not raise OSError
        dead.request({"seconds": 1.0}, 60)
    dead.close()
    mute = ServedWorker([sys.executable, "-c", "import time; time.sleep(30)"], env,
                        tmp_path / "mute.log")
    with pytest.raises(RuntimeError, match="no answer in 0 s"):
        mute.answer(0.2)
    mute.proc.kill()
    mute.close()


def _precision_runs(precision: str, layout: str, native: float, ipex: float,
                    repeat: int = 0, **extra: object) -> list[dict]:
    return [{**_run(backend, repeat, rate, layout), "precision": precision, **extra}
            for backend, rate in (("native", native), ("ipex", ipex))]


def test_targets_judge_the_paired_rows_first_and_say_by_how_much() -> None:
    runs = (_precision_runs("amx_int8", "batch 2048", 2000.0, 1000.0)           # worker: 2.0
            + _precision_runs("amx_int8", "paired batch 2048", 1200.0, 1000.0, slice=0)  # 1.2
            + _precision_runs("amx_bfloat32", "batch 2048", 5500.0, 1000.0)      # no paired row
            + _precision_runs("amx_int8", "batch 1", 30.0, 100.0)  # p50 = rate / 1000
            + _precision_runs("avx_fp32", "sharing 2x1 core, batch 16", 1000.0, 800.0)
            + [{"backend": "peak", "precision": "amx_int8", "layout": "paired batch 2048",
                "repeat": 0, "slice": 0, "peak_gflops": 2.0, "error": None}])
    judged = {(t["target"], t["precision"]): t for t in targets(summarise(runs, {}, 1_000_000))}
    int8 = judged[("batch 2048 native / IPEX", "amx_int8")]
    assert (int8["measured"], int8["met"], int8["source"]) == (
        pytest.approx(1.2), False, "paired batch 2048")
    bf32 = judged[("batch 2048 native / IPEX", "amx_bfloat32")]
    assert bf32["met"] and bf32["source"] == "batch 2048"
    latency = judged[("batch-1 p50, native / IPEX", "amx_int8")]
    assert latency["measured"] == pytest.approx(0.3) and latency["met"] and latency["at_most"]
    assert judged[("weight sharing native / IPEX", "avx_fp32")]["measured"] == pytest.approx(1.25)
    # 1200 samples/s x 1 MFLOP over the 2 GFLOP/s peak timed after that window: 60%
    roofline = judged[("batch 2048 roofline (native)", "amx_int8")]
    assert roofline["measured"] == pytest.approx(0.6) and not roofline["met"]
    assert ("batch 2048 native / IPEX", "amx_bfloat16") not in judged  # not in this run
    doc = {**_paired_doc(runs, repeats=1), "summary": summarise(runs, {}, 1_000_000)}
    text = markdown(doc)
    assert "| batch 2048 native / IPEX | amx_int8 | 1.200 | >= 1.300 | missed by 7.7% | " \
           "paired batch 2048 |" in text
    assert "| batch 2048 roofline (native) | amx_int8 | 60.00% | >= 70.00% | " \
           "missed by 10.00 points | paired batch 2048 |" in text
    assert "| weight sharing native / IPEX | avx_fp32 | 1.250 | >= 1.300 | missed by 3.8% |" in text
    assert "| batch-1 p50, native / IPEX | amx_int8 | 0.300 | <= 0.600 | met | batch 1 |" in text
    assert "they are set for terabyte-small, this run is tiny: indicative only" in text
    # a result that stores its targets (harness.main) renders them as derived ones
    assert markdown({**doc, "targets": targets(doc["summary"])}) == text
    doc["parameters"]["preset"] = "terabyte-small"
    assert "Against #7's targets (batch 2048 from the paired windows where the run has them; " \
           "medians):" in markdown(doc)


def test_a_paired_roofline_without_paired_peaks_says_so_and_no_ipex_judges_nothing() -> None:
    runs = _precision_runs("amx_int8", "paired batch 2048", 800.0, 500.0, slice=0)
    roofline = next(t for t in targets(summarise(runs, PEAKS, 1_000_000))
                    if t["target"].endswith("roofline (native)"))
    assert roofline["source"] == "paired batch 2048 (over the run's start / end peak)"
    native_only = [r for r in runs if r["backend"] == "native"]
    assert [t["target"] for t in targets(summarise(native_only, PEAKS, 1_000_000))] == [
        "batch 2048 roofline (native)"]


def test_report_renders_a_saved_result_again(tmp_path: Path, capsys) -> None:
    import json

    runs = _precision_runs("amx_int8", "paired batch 2048", 1400.0, 1000.0, slice=0)
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(_paired_doc(runs, repeats=1)))
    assert render_main([str(saved)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## DLRM tiny: native vs IPEX on Xeon")
    assert "| batch 2048 native / IPEX | amx_int8 | 1.400 | >= 1.300 | met |" in out
    saved.write_text("{")  # truncated
    assert render_main([str(saved)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"harness_report: cannot render {saved}") and err.count("\n") == 1
