"""dlrm-bench report: one self-contained HTML file, charts that decode in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_compare import write_run

from dlrm_bench.cli import main
from dlrm_bench.report import render_report

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
IMG = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="([^"]+)"')


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny launch (2 instances) as host node1, and a copy of it as host node2."""
    root = tmp_path_factory.mktemp("results") / "20260101T000000Z"
    cmd = [sys.executable, "-m", "dlrm_bench", "launch", "--output", str(root / "node1"),
           "--host-label", "node1", "--preset", "tiny", "--precision", "avx_fp32",
           "--batch-size", "64", "--steps", "40", "--warmup-steps", "5",
           "--cores-per-instance", "1", "--instances", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copytree(root / "node1", root / "node2")
    host_result = root / "node2" / "host_result.json"
    data = json.loads(host_result.read_text())
    data["host"] = "node2"
    host_result.write_text(json.dumps(data))
    return root


def test_report_is_self_contained_with_charts_and_facts(real_run: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    assert main(["report", str(real_run)]) == 0
    out = real_run / "report.html"
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    charts = IMG.findall(text)
    assert charts == ["throughput per host", "throughput per instance",
                      "latency percentiles per host", "latency distribution"]
    # nothing external: no scripts, links, remote URLs; every image is a data URI
    assert "<script" not in text and "<link" not in text
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    assert "http://" not in text and "https://" not in text
    assert "#Key KPI" in text and "*Throughput (samples/sec):" in text
    for fact in ("CPU model", "ISA flags", "NUMA nodes", "governor", "hugepages", "THP",
                 "oneDNN", "torch", "python", "node1", "node2", "precision", "avx_fp32"):
        assert fact in text, fact
    result = json.loads((real_run / "node1" / "instance-0" / "result.json").read_text())
    assert result["versions"]["torch"] in text and result["host"]["cpu_model"] in text
    assert not list(real_run.glob(".report.html.*"))  # atomic write leaves no temp file


def test_accuracy_run_has_an_auc_chart_and_no_latency(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", mode="accuracy", auc=0.8025, latency_ms=None)
    text = render_report(run)
    assert IMG.findall(text) == ["throughput per host", "throughput per instance",
                                 "AUC per instance"]
    assert "*Accuracy (%): 80.2" in text
    assert "Intel(R) Xeon(R) Platinum 8480+" in text and "2048kB: 2048 (free 1024)" in text


def test_results_dir_with_latest_link_and_output_option(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_run(results / "run-1")
    (results / "latest").symlink_to("run-1")
    target = tmp_path / "out" / "r.html"
    assert main(["report", str(results), "--output", str(target)]) == 0
    assert "run <b>run-1</b>" in target.read_text()


@pytest.mark.parametrize("case", ["missing", "empty", "file"])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      case: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    code = main(["report", str(tmp_path / {"missing": "nope"}.get(case, case))])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("dlrm-bench: error: ")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=90, check=False)


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, complete: i.complete,
    w: i.naturalWidth, h: i.naturalHeight}));
  const pre = document.createElement('pre'); pre.id = 'img-check';
  pre.textContent = JSON.stringify(imgs); document.body.appendChild(pre);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make system-deps)")
def test_report_renders_in_headless_chromium(real_run: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    assert main(["report", str(real_run), "-o", str(report)]) == 0
    # the page's images, as the browser decoded them (a copy with a probe script)
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    match = re.search(r'<pre id="img-check">(.*?)</pre>', dom.stdout, re.S)
    assert match, dom.stderr[-2000:]
    imgs = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(imgs) == 4
    for img in imgs:
        assert img["complete"] and img["w"] > 100 and img["h"] > 100, img
    # a screenshot of the unmodified report shows the charts
    shot = tmp_path / "shot.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(str(shot))[..., :3]
    assert pixels.shape[0] == 2000 and pixels.shape[1] == 1200
    assert float(pixels.std()) > 0.05  # not a blank page
    colours = np.unique((pixels[::4, ::4] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # bars, lines, text: many colours
    # the chart area (below the header and KPI block) is not white
    chart_band = pixels[400:1100]
    assert float((chart_band < 0.9).any(axis=2).mean()) > 0.05


def test_failed_instance_shows_its_log_tail(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", hosts=("spr-01",))
    path = run / "spr-01" / "host_result.json"
    data = json.loads(path.read_text())
    data["status"] = "failed"
    data["instances"][1].update(exit_code=1, state="failed", exit="exit status 1",
                                log_tail=["Traceback (most recent call last):",
                                          "RuntimeError: <oneDNN> primitive failed"])
    path.write_text(json.dumps(data))
    text = render_report(run)
    assert "<h2>Failures</h2>" in text and "status <b class=\"bad\">failed</b>" in text
    assert "spr-01 instance 1: exit status 1" in text
    assert "RuntimeError: &lt;oneDNN&gt; primitive failed" in text  # escaped
    assert "1 of 2 instances failed" in text
