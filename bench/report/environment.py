"""What the numbers were produced with: the runs' presets, recipes, devices, torch versions, git
commits, plugins and dates (from the store), and the packages and machine that wrote the report."""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata

import pandas as pd

from bench.report.document import Paragraph, Table

PACKAGES = ["torch", "torchvision", "fvcore", "numpy", "pandas", "scipy", "scikit-learn",
            "opencv-python-headless", "matplotlib", "seaborn", "Pillow", "tabulate"]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _distinct(values: pd.Series) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(values) if v is not None and str(v)) or "—"


def plugins_text(stored: object) -> str:
    """A run's plugins (JSON as stored) as ``bench-plugin-srm 0.1.0``, or the module's name for
    code outside any installed distribution; empty for none."""
    records = json.loads(stored) if isinstance(stored, str) and stored else []
    return ", ".join(f"{r['distribution']} {r['version']}" if r.get("distribution")
                     else f"module {r['module']}" for r in records)


def runs_table(runs: pd.DataFrame) -> Table | None:
    """One row per (dataset, backbone): what the stored runs were made with (a plugins column
    when some run used a plugin)."""
    if runs.empty:
        return None
    plugins = [plugins_text(p) for p in runs.get("plugins", pd.Series([""] * len(runs)))]
    runs = runs.assign(plugin_text=plugins)
    rows = []
    for (dataset, backbone), part in runs.groupby(["dataset", "backbone"], sort=False):
        dates = sorted(d for d in list(part["started"]) + list(part["ended"]) if d)
        rows.append([dataset, backbone, _distinct(part["preset"]), str(len(part)),
                     str(int((part["status"] == "complete").sum())), _distinct(part["device"]),
                     _distinct(part["torch_version"]), _distinct(part["git_commit"])]
                    + ([_distinct(part["plugin_text"])] if any(plugins) else [])
                    + [f"{dates[0]} – {dates[-1]}" if dates else "—"])
    headers = ["dataset", "backbone", "preset", "runs", "complete", "device", "torch",
               "git commit"] + (["plugins"] if any(plugins) else []) + ["dates (UTC)"]
    return Table("Runs", headers, rows, [None] * len(rows),
                 ["Measurement settings (threads, batch size, dtype, input size, tool) are given "
                  "under each table, from what each task recorded."])


def environment_blocks(runs: pd.DataFrame) -> list[Paragraph | Table]:
    versions = package_versions()
    machine = (f"Report written {datetime.now(timezone.utc).isoformat(timespec='seconds')} on "
               f"{platform.platform()} ({platform.machine()}, {os.cpu_count()} CPUs).")
    packages = Table("Packages (report environment)", ["package", "version"],
                     [[k, v] for k, v in versions.items()], [None] * len(versions))
    table = runs_table(runs)
    return ([table] if table else []) + [Paragraph(machine), packages]
