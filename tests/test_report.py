"""Reports: tables (every method, units, intervals, paired differences and verdicts), the summary,
figures, the self-contained HTML, method order and colours, recipe groups, and the report
written by `bench run` / `bench report`."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hand_stats import holm, paired_p
from PIL import Image

from bench.cli import main
from bench.registry import METHODS
from bench.report.write import write_report
from bench.report.collect import BASELINE_COLOUR, load, method_order, method_palette
from bench.report.figures import Plotter, accuracy_vs_cost
from bench.report.results import summary_frame
from bench.report.stats import ALPHA, estimate, power
from bench.report.tables import describe_extras
from bench.store import Store
from bench.tasks.base import Metric, TaskResult

METHOD_ORDER = ["gap-fc", "se", "se[r=8]", "ssia"]  # none but gap-fc registered: the rest by name
TOP1 = {"gap-fc": [70.0, 72.0], "se": [74.0, 75.0], "se[r=8]": [71.0, 73.5], "ssia": [70.5]}
WSOL = ["gt_known_loc", "top1_loc", "maxboxacc_v2", "maxboxacc_30", "maxboxacc_50", "maxboxacc_70",
        "maxboxacc_v1", "pxap"]
FIGURE_KINDS = ["forest", "accuracy-vs-cost", "training-step", "latency", "wsol", "curves"]


def add_run(store: Store, method: str, seed: int, recipe: dict | None = None) -> int:
    recipe = recipe or {"epochs": 2, "batch_size": 64}
    return store.start_run({"method": method, "seed": seed, "recipe": recipe}, method=method,
                           method_name=method.split("[")[0], options={}, backbone="resnet8",
                           dataset="toy", seed=seed, preset="smoke", device="cpu",
                           torch_version="2.x")


def build_store(out: Path) -> None:
    """Four methods (one with a single seed), every task's metrics, curves, a gallery image for
    gap-fc, a gallery whose file is gone for se, and a failed task for ssia."""
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / "results.sqlite")
    gallery = out / "figures" / "gallery-run1.png"
    gallery.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8)).save(gallery)
    for k, method in enumerate(METHOD_ORDER):
        for seed, top1 in enumerate(TOP1[method]):
            run = add_run(store, method, seed)
            store.record_task(run, "accuracy", TaskResult(
                [Metric("top1", top1, "%", {"split": "test", "images": 64}),
                 Metric("top5", 99.0, "%", {"split": "test", "images": 64}),
                 Metric("test_loss", 0.5 + k / 10, "nats", {"split": "test"}),
                 Metric("train_time", 10.0 + k, "s", {"device": "cpu"}),
                 Metric("energy", 3.0 + k, "J", {"meter": "rapl"})],
                {"train_loss": [2.0, 1.0 + seed], "train_top1": [40.0, 60.0],
                 "test_top1": [45.0, top1], "lr": [0.05, 0.0]}))
            if method == "ssia":
                store.record_task(run, "wsol", TaskResult(), "failed", "NaN loss in the maps")
            else:
                artifacts = {"gallery": str(gallery) if method == "gap-fc" else
                             str(out / "figures" / f"gallery-gone-{run}.png")}
                store.record_task(run, "wsol", TaskResult(
                    [Metric(m, 40.0 + i + k + seed, "%", {"cam_curve_interval": 0.01})
                     for i, m in enumerate(WSOL)], artifacts=artifacts))
            if seed == 0:
                store.record_task(run, "cost", TaskResult([
                    Metric("params", 78000 + 1000 * k, "count", {}),
                    Metric("params_added", 1000 * k, "count", {}),
                    Metric("gmacs", 0.012 + 0.001 * k, "GMac", {"tool": "fvcore", "input": [1, 1, 16, 16]}),
                    Metric("gmacs_all", 0.0125 + 0.001 * k, "GMac", {"tool": "fvcore+handles"}),
                    Metric("latency_ms", 1.0 + k, "ms", {"batch_size": 1, "threads": 1}),
                    Metric("latency_ms", 10.0 + k, "ms", {"batch_size": 64, "threads": 1}),
                    Metric("train_step_ratio", 1.0 + k / 10, "x", {"batch_size": 64})]))
            store.end_run(run, "failed" if method == "ssia" else "complete", None)
    store.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    build_store(out)
    files = write_report(out)
    return out, files, (out / "report.md").read_text(), (out / "report.html").read_text()


def md_tables(markdown: str) -> dict[str, list[list[str]]]:
    """Markdown tables by their ### title: header row then body rows, cells stripped."""
    tables, title = {}, None
    for line in markdown.splitlines():
        if line.startswith("### "):
            title = line[4:]
        elif line.startswith("| ") and title:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            tables.setdefault(title, []).append(cells)
    return tables


def test_method_order_and_palette():
    registered = [n for n in METHODS.names() if n != "gap-fc"]
    specs = ["zz-gone", "gap-fc[x=1]", "aa-gone"] + [f"{n}[x=1]" for n in registered] + \
        list(reversed(registered)) + ["gap-fc"]
    expected = ["gap-fc", "gap-fc[x=1]"] + [s for n in registered for s in (n, f"{n}[x=1]")] + \
        ["aa-gone", "zz-gone"]
    assert method_order(specs) == expected
    palette = method_palette(specs)
    assert palette["gap-fc"] == BASELINE_COLOUR
    assert len(set(palette.values())) == len(specs)  # one distinct colour per method
    for name in registered:  # a registered method's colour does not depend on what else is shown
        assert method_palette([name])[name] == palette[name]


def test_files_written(report):
    out, files, _, _ = report
    assert files.markdown == out / "report.md" and files.html == out / "report.html"
    for kind in FIGURE_KINDS:
        png, svg = out / "figures" / f"toy-resnet8-{kind}.png", out / "figures" / f"toy-resnet8-{kind}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in svg.read_text()[:2000]
        assert png in files.figures and svg in files.figures


def test_every_method_in_every_table_in_order(report):
    _, _, markdown, html = report
    tables = md_tables(markdown)
    for title in ["Accuracy", "Weakly-supervised object localization", "Size, compute and memory",
                  "Time", "Other metrics"]:
        assert [row[0] for row in tables[title][1:]] == METHOD_ORDER, title
    legend = re.search(r'<p class="legend">(.*?)</p>', html).group(1)
    assert re.findall(r"</span>([^<]+)</span>", legend) == METHOD_ORDER


def test_units_and_settings(report):
    _, _, markdown, _ = report
    tables = md_tables(markdown)
    assert tables["Accuracy"][0][:6] == ["method", "seeds", "top-1 (%)", "Δ top-1 (pp) [95% CI]",
                                         "p (Holm, top-1)", "verdict (top-1)"]
    assert "test loss (nats)" in tables["Accuracy"][0]
    assert tables["Size, compute and memory"][0] == [
        "method", "params (count)", "added params (count)", "GMACs, fvcore default ops",
        "GMACs, incl. element-wise ops"]
    assert tables["Time"][0][1:4] == ["latency [batch_size=1] (ms)", "latency [batch_size=64] (ms)",
                                      "training step ratio (x gap-fc)"]
    assert "MaxBoxAcc δ=50% (%)" in tables["Weakly-supervised object localization"][0]
    assert tables["Other metrics"][0] == ["method", "accuracy: energy (J)"]
    assert "- gmacs: input=[1, 1, 16, 16], tool=fvcore" in markdown
    assert "- latency_ms [batch_size=1], latency_ms [batch_size=64]: threads=1" in markdown


def test_headline_table_comes_first(report):
    _, _, markdown, html = report
    assert markdown.split("\n## ")[1].startswith("Headline results")
    assert html.index('<section id="headline">') < html.index('<section id="toy-resnet8">')
    headline = md_tables(markdown.split("\n## ")[1])["toy / resnet8"]
    assert headline[0] == [
        "method", "top-1 (%)", "top-5 (%)", "MaxBoxAccV2 (%)", "GT-known Loc (%)", "Top-1 Loc (%)",
        "PxAP (%)", "params (count)", "GMACs, fvcore default ops", "GMACs, incl. element-wise ops",
        "latency [batch_size=1] (ms)", "latency [batch_size=64] (ms)",
        "training step ratio (x gap-fc)", "training time (s)"]
    rows = {r[0]: r for r in headline[1:]}
    assert [r[0] for r in headline[1:]] == METHOD_ORDER
    # se (k=1): top-1 74/75; MaxBoxAccV2 (the 3rd WSOL metric) 40 + 2 + 1 + seed; 79,000 params
    assert rows["se"][1] == estimate([74.0, 75.0]).text("%", 2)
    assert rows["se"][3] == estimate([43.0, 44.0]).text("%", 2)
    assert rows["se"][7] == "79,000" and rows["ssia"][3] == "—"


def test_accuracy_vs_cost_points_are_labelled(report, monkeypatch):
    out, _, _, _ = report
    kept = []
    monkeypatch.setattr(Plotter, "save", lambda self, fig, *args: kept.append(fig))
    group = load(out).groups[0]
    accuracy_vs_cost(group, summary_frame([group]),
                     Plotter(out / "figures", method_palette(METHOD_ORDER)))
    gmacs, step = kept[0].axes[:2]  # the legend is the figure's, not an axes
    labels = {t.get_text(): t.xy for t in gmacs.texts}
    assert set(labels) == set(METHOD_ORDER)
    assert labels["se"] == pytest.approx((0.0135, 74.5))  # at se's point: gmacs_all, mean top-1
    assert {t.get_text(): t.xy for t in step.texts}["se"] == pytest.approx((1.1, 74.5))


def test_settings_that_differ_name_their_methods():
    extras = [("a", {"tool": "x", "n": 1, "t": 0.1}), ("b", {"tool": "y", "n": 1, "t": 0.2}),
              ("c", {"tool": "x", "t": 0.3}), ("d", {"tool": "x", "n": 1, "t": 0.4, "bs": 8})]
    assert describe_extras(extras, {"bs"}) == \
        "n=1 (a, b, d); (none) (c), t varies (4 values), tool=x (a, c, d); y (b)"
    assert describe_extras(extras[:1], set()) == "n=1, t=0.1, tool=x"


def test_accuracy_numbers(report):
    """Means with Student t intervals; differences paired by seed; two paired seeds: the
    difference and its interval, no verdict; one seed: no interval and no test."""
    _, _, markdown, _ = report
    rows = {r[0]: r for r in md_tables(markdown)["Accuracy"][1:]}
    assert rows["gap-fc"][1:7] == ["2", estimate(TOP1["gap-fc"]).text("%", 2), "reference", "—",
                                   "reference", "—"]
    assert rows["se"][2] == estimate(TOP1["se"]).text("%", 2) == "74.50 ± 6.35"  # 12.706 * .5
    # paired differences 4 and 3: mean 3.5, t(0.975, 1) * sd (0.7071) / sqrt 2 = 6.353
    assert rows["se"][3] == "+3.50 [-2.85, +9.85]"
    assert rows["se"][4] == "—" and rows["se"][5] == "2 seeds: too few for a verdict"
    # what 2 seeds can detect, at alpha / 3 methods: shown though there is no verdict
    mdd = power([4.0, 3.0], ALPHA / 3).detectable
    assert rows["se"][6].startswith(f"detectable from {mdd:.2f} pp; about ")
    assert rows["se[r=8]"][3].startswith("+1.25 [")
    assert rows["ssia"][1:7] == ["1", "70.50 (n=1, no interval)", "+0.50 (n=1, no interval)", "—",
                                 "n=1: no test", "—"]  # paired: seed 0 only (70.5 vs 70.0)
    assert rows["se"][10] == "2 seeds: too few for a verdict"  # top-5


def test_verdicts_from_three_paired_seeds(tmp_path):
    """Three paired seeds: Holm-corrected p over the two methods, a verdict and the power."""
    values = {"gap-fc": [70.0, 72.0, 71.0], "se": [74.0, 75.0, 74.5], "cbam": [71.0, 71.5, 72.5]}
    store = Store(tmp_path / "results.sqlite")
    for method, top1 in values.items():
        for seed, v in enumerate(top1):
            run = add_run(store, method, seed)
            store.record_task(run, "accuracy", TaskResult([Metric("top1", v, "%"),
                                                           Metric("top5", 99.0, "%")]))
            store.end_run(run, "complete", None)
    store.close()
    markdown = write_report(tmp_path).markdown.read_text()
    rows = {r[0]: r for r in md_tables(markdown)["Accuracy"][1:]}
    diffs = {m: [a - b for a, b in zip(values[m], values["gap-fc"])] for m in ("se", "cbam")}
    holm_se, holm_cbam = holm([paired_p(diffs["se"]), paired_p(diffs["cbam"])])
    assert rows["se"][4] == f"{holm_se:.3g}" and rows["cbam"][4] == f"{holm_cbam:.3g}"
    assert holm_se < 0.05 < holm_cbam  # se: t = 3.5 / (0.5 / sqrt 3) = 12.1 on 2 df
    assert rows["se"][5] == "better (n=3)"
    assert rows["cbam"][5] == "no detectable difference (n=3)"
    assert rows["se"][10] == "no spread: no test"  # top-5 is 99.0 for every run
    cbam = power(diffs["cbam"], ALPHA / 2)
    assert rows["cbam"][6] == (f"detectable from {cbam.detectable:.2f} pp; about "
                               f"{cbam.seeds_needed} seeds for the observed difference")
    verdicts = {(r[0], r[1]): r for r in md_tables(markdown)["toy / resnet8 (3 seeds): verdicts "
                                                             "against the baseline"][1:]}
    diff, interval = rows["cbam"][3].split(" ", 1)  # the accuracy table's "Δ [CI]" cell
    assert verdicts[("top-1", "cbam")][2:5] == [f"{diff} pp {interval}", rows["cbam"][5],
                                               f"{cbam.detectable:.2f} pp ({cbam.seeds_needed})"]


def test_summary_states_the_verdicts_first(report):
    """The summary is a verdict table (method x headline metric) and a forest plot."""
    _, _, markdown, _ = report
    summary = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    table = md_tables(summary)["toy / resnet8 (1-2 seeds): verdicts against the baseline"]
    assert table[0] == ["metric", "method", "Δ [95% CI]", "verdict", "MDD (seeds for Δ)"]
    assert [r[:2] for r in table[1:]] == [[m, x] for m in ("top-1", "MaxBoxAccV2", "PxAP")
                                          for x in ("se", "se[r=8]", "ssia") if
                                          m == "top-1" or x != "ssia"]  # ssia's wsol failed
    rows = {(r[0], r[1]): r for r in table[1:]}
    assert rows[("top-1", "se")][2:4] == ["+3.50 pp [-2.85, +9.85]", "2 seeds: too few for a verdict"]
    assert rows[("top-1", "ssia")][2:5] == ["+0.50 pp (n=1, no interval)", "n=1: no test", "—"]
    assert "![Differences to gap-fc](figures/toy-resnet8-forest.png)" in summary


def test_wsol_cost_and_missing_cells(report):
    _, _, markdown, _ = report
    tables = md_tables(markdown)
    wsol = {r[0]: r for r in tables["Weakly-supervised object localization"][1:]}
    assert wsol["se"][1] == estimate([41.0, 42.0]).text("%", 2)  # 40 + k(1) + seed(0, 1)
    assert set(wsol["ssia"][1:]) == {"—"}
    cost = {r[0]: r for r in tables["Size, compute and memory"][1:]}
    assert cost["se[r=8]"][1:5] == ["80,000", "2,000", "0.01400", "0.01450"]
    failures = md_tables(markdown)["Failed runs"]
    assert ["ssia", "0", "wsol", "failed", "NaN loss in the maps",
            "the run's own (final; --retry-failed reruns it)"] in failures


def test_html_is_self_contained(report):
    out, _, _, html = report
    assert 'src="http' not in html and "<link" not in html and "url(" not in html
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) == len(FIGURE_KINDS) + 1  # the figures and gap-fc's gallery
    assert all(s.startswith("data:image/") for s in sources)
    gallery = base64.b64encode((out / "figures" / "gallery-run1.png").read_bytes()).decode()
    assert f"data:image/png;base64,{gallery}" in sources
    assert "Content-Security-Policy" in html and "default-src 'none'" in html

    class Checker(HTMLParser):  # every opened element that needs closing is closed, in order
        def __init__(self):
            super().__init__()
            self.stack = []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "img", "br", "hr", "input", "link"):
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack.pop() == tag

    checker = Checker()
    checker.feed(html)
    assert checker.stack == []


def test_missing_gallery_file_is_named(report):
    _, _, markdown, _ = report
    assert re.search(r"Gallery \(wsol\): se, seed 0: file .*gallery-gone-\d+\.png not found", markdown)
    assert "![Gallery (wsol): gap-fc, seed 0](figures/gallery-run1.png)" in markdown


def test_recipes_are_reported_apart(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    for epochs, top1 in ((1, 50.0), (3, 80.0)):
        run = add_run(store, "gap-fc", 0, {"epochs": epochs, "batch_size": 64})
        store.record_task(run, "accuracy", TaskResult([Metric("top1", top1, "%")]))
    store.close()
    markdown = write_report(tmp_path).markdown.read_text()
    assert "## toy / resnet8 (epochs=1)" in markdown and "## toy / resnet8 (epochs=3)" in markdown
    sections = markdown.split("\n## ")[3:5]  # after the headline and the summary
    assert [md_tables(s)["Accuracy"][1][2] for s in sections] == [
        "50.00 (n=1, no interval)", "80.00 (n=1, no interval)"]


def test_empty_store_and_missing_store(tmp_path, capsys):
    Store(tmp_path / "results.sqlite").close()
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert "No results stored yet." in (tmp_path / "report.md").read_text()
    assert main(["report", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no results store") and err.count("\n") == 1


def test_bench_run_writes_the_report(tmp_path, capsys):
    code = main(["run", "--methods", "gap-fc", "--dataset", "toy-quadrants", "--backbone", "resnet8",
                 "--epochs", "1", "--seeds", "1", "--jobs", "1", "--no-progress", "--tasks", "accuracy", "--out", str(tmp_path)])
    assert code == 0
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    tables = md_tables((tmp_path / "report.md").read_text())
    assert [r[0] for r in tables["Accuracy"][1:]] == ["gap-fc"]
    assert (tmp_path / "figures" / "toy-quadrants-resnet8-curves.svg").exists()
