"""report.html in headless Chromium: every image decodes (naturalWidth > 0), no console or script
error, nothing blocked by the page's no-network policy; a screenshot is kept as an artifact
(copied to $BENCH_ARTIFACTS when set). Skipped only when Chromium is not installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.report import write_report
from test_report import FIGURE_KINDS, build_store  # the hand-made store of tests/test_report.py

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                                "(apt-get install chromium chromium-driver)")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--no-first-run", "--no-default-browser-check",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_report_renders_in_chromium(tmp_path):
    out = tmp_path / "out"
    build_store(out)
    page = write_report(out).html.resolve().as_uri()
    proc = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", page)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:2000]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    errors = re.search(r'<pre id="self-check-errors"[^>]*>(.*?)</pre>', proc.stdout, re.S).group(1)
    assert attrs.get("data-checked") == "done", "the page's load handler did not run"
    assert attrs["data-errors"] == "0", errors
    assert int(attrs["data-images"]) == len(FIGURE_KINDS) + 1  # the figures and the gallery
    assert attrs["data-images-loaded"] == attrs["data-images"]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # the report logs nothing: any console message is an error or a warning

    shot = tmp_path / "report.png"
    proc = chromium(tmp_path / "profile", "--hide-scrollbars", "--window-size=1400,3000",
                    "--virtual-time-budget=10000", f"--screenshot={shot}", page)
    assert proc.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("BENCH_ARTIFACTS"):
        target = Path(os.environ["BENCH_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "report.png")
