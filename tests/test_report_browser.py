"""report.html in headless Chromium: every image decodes (naturalWidth > 0), no console or script
error, nothing blocked by the page's no-network policy, and at 1280 px every table column visible
or reachable by its table's own horizontal scroll (the WSOL and cost tables fit outright), none
cut off by the page; a screenshot is kept as an artifact (copied to $BENCH_ARTIFACTS when set).
Skipped only when Chromium is not installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.metrics import METRICS
from bench.report.write import write_report
from bench.store import Store
from bench.tasks.base import Metric, TaskResult
from test_report import FIGURE_KINDS, build_store  # the hand-made store of tests/test_report.py

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                                 "(apt-get install chromium chromium-driver)")]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--no-first-run", "--no-default-browser-check",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def add_every_cost_figure(out: Path) -> None:
    """Every catalogued cost metric for each method's first run, at ResNet-50 magnitudes, so that
    the compute table is as wide as a real one."""
    store = Store(out / "results.sqlite")
    for k, run in enumerate(r for r in store.runs() if r["seed"] == 0):
        metrics = [Metric(m.name, 25_557_032.0 + 1000 * k if m.unit == "count" else 4.111 + k / 100,
                          m.unit, {"tool": m.tool}) for m in METRICS if m.task == "cost"]
        store.record_task(run["id"], "cost", TaskResult(metrics))
    store.close()


def self_check(proc: subprocess.CompletedProcess) -> tuple[dict[str, str], str]:
    """The attributes the page's self-check wrote on <body>, and its error text."""
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:2000]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    errors = re.search(r'<pre id="self-check-errors"[^>]*>(.*?)</pre>', proc.stdout, re.S).group(1)
    assert attrs.get("data-checked") == "done", "the page's load handler did not run"
    return attrs, errors


def test_report_renders_in_chromium(tmp_path):
    out = tmp_path / "out"
    build_store(out)
    add_every_cost_figure(out)
    html = write_report(out).html
    page = html.resolve().as_uri()
    proc = chromium(tmp_path / "profile", "--window-size=1280,2000", "--virtual-time-budget=10000",
                    "--dump-dom", page)
    attrs, errors = self_check(proc)
    assert attrs["data-errors"] == "0", errors  # no table cut off by the page either
    assert int(attrs["data-images"]) == len(FIGURE_KINDS) + 1  # the figures and the gallery
    assert attrs["data-images-loaded"] == attrs["data-images"]
    assert int(attrs["data-tables"]) >= 8
    scrolling = attrs["data-tables-scrolling"].split("|")
    for title in ("Weakly-supervised object localization", "Size, compute and memory"):
        assert title not in scrolling  # fits the page at 1280 px: every column in view
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # the report logs nothing: any console message is an error or a warning

    # the check sees a table cut off: the same page with tables that overflow instead of scrolling
    spilling = tmp_path / "spilling.html"
    spilling.write_text(html.read_text().replace(".scroll { overflow-x: auto;",
                                                 ".scroll { overflow-x: visible;"))
    proc = chromium(tmp_path / "profile", "--window-size=700,2000", "--virtual-time-budget=10000",
                    "--dump-dom", spilling.resolve().as_uri())
    attrs, errors = self_check(proc)
    assert "table cut off by the page: Weakly-supervised object localization" in errors

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path / "profile", "--hide-scrollbars", "--window-size=1280,3000",
                    "--virtual-time-budget=10000", f"--screenshot={shot}", page)
    assert proc.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("BENCH_ARTIFACTS"):
        target = Path(os.environ["BENCH_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "report.png")
