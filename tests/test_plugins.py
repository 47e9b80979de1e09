"""Plugins: the example package examples/bench-plugin-srm really installed (pip, into a target
directory put on the path of the commands that use it) shows in ``bench list``, runs in a suite
with two worker processes and in ``bench tune``, records its version with its runs and passes
``bench.testing.check_method``; bad plugins are one ``error:`` line and exit code 2."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CLUTTER

from bench import plugins
from bench.cli import main
from bench.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bench-plugin-srm"
SRM = {"module": "bench_plugin_srm", "distribution": "bench-plugin-srm", "version": "0.1.0"}
TINY = ["--preset", "smoke", "--epochs", "1", "--tasks", "accuracy", "--no-progress",
        "--dataset", TINY_CLUTTER]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The environment of commands that see the example plugin, installed by pip (a wheel built
    from a copy of the example, so the source tree gets no build files)."""
    tmp = tmp_path_factory.mktemp("plugin")
    source, target = tmp / "src", tmp / "site"
    shutil.copytree(EXAMPLE, source)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(target)]),
                OMP_NUM_THREADS="1", BENCH_TEST_THREADS="1")


def bench(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def runs(out: Path) -> dict[str, tuple[str, list]]:
    db = sqlite3.connect(out / "results.sqlite")
    rows = db.execute("SELECT method, status, plugins FROM runs").fetchall()
    db.close()
    return {m: (s, json.loads(p)) for m, s, p in rows}


def test_installed_plugin_is_listed_with_its_package(installed):
    proc = bench(installed, "list")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("srm "))
    assert line.endswith("[plugin: bench-plugin-srm 0.1.0]")
    assert proc.stdout.count("[plugin:") == 1  # bench's own entries are not marked


@pytest.mark.slow
def test_installed_plugin_runs_in_two_worker_processes(installed, tmp_path):
    proc = bench(installed, "run", "--methods", "gap-fc", "srm", "--jobs", "2", "--out",
                 str(tmp_path), *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert runs(tmp_path) == {"gap-fc": ("complete", []), "srm": ("complete", [SRM])}
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "bench-plugin-srm 0.1.0" in report  # the runs table names the plugin


@pytest.mark.slow
def test_installed_and_run_time_plugins_run_as_ray_tasks(installed, tmp_path):
    """Ray workers load the installed plugin (entry point) and the module named by --plugin."""
    pytest.importorskip("ray")
    (tmp_path / "ray_probe.py").write_text(METHOD.format(name="ray-probe"))
    env = dict(installed, PYTHONPATH=os.pathsep.join([installed["PYTHONPATH"], str(tmp_path)]))
    proc = bench(env, "run", "--methods", "srm", "ray-probe", "--plugin", "ray_probe",
                 "--executor", "ray", "--threads", "1", "--out", str(tmp_path / "out"), *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert runs(tmp_path / "out") == {
        "srm": ("complete", [SRM]),
        "ray-probe": ("complete", [{"module": "ray_probe", "distribution": None,
                                    "version": None}])}


@pytest.mark.slow
def test_installed_plugin_is_tuned(installed, tmp_path):
    proc = bench(installed, "tune", "--methods", "srm", "--trials", "1", "--out", str(tmp_path),
                 *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "srm: 1 trials (1 complete)" in proc.stdout
    assert runs(tmp_path) == {"srm": ("complete", [SRM])}


def test_installed_plugin_passes_its_own_contract_test(installed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(EXAMPLE / "tests")], capture_output=True, text=True,
                          env=installed, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-2000:]


def test_documented_example_is_the_plugin_module():
    """docs/adding-a-method.md shows the plugin's module verbatim (tests/test_method_contract.py
    executes that block)."""
    doc = (ROOT / "docs" / "adding-a-method.md").read_text(encoding="utf-8")
    module = (EXAMPLE / "src" / "bench_plugin_srm" / "__init__.py").read_text(encoding="utf-8")
    assert f"```python\n{module}```" in doc


# -- bad plugins: in this process, with a distribution written on the path -----------------------
@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """This process's plugin state emptied (entry points read again), the registries restored,
    and ``tmp_path`` on the import path for modules and distributions written there."""
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_LOADED", False)
    for name in ("_PLUGINS", "_ORIGIN"):
        monkeypatch.setattr(plugins, name, {})
    monkeypatch.setattr(plugins, "_RUNTIME", [])
    monkeypatch.syspath_prepend(str(tmp_path))
    before = {r.kind: set(r.names()) for r in plugins.REGISTRIES}
    modules = set(sys.modules)
    yield tmp_path
    for registry in plugins.REGISTRIES:
        for name in set(registry.names()) - before[registry.kind]:
            registry.remove(name)
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def distribution(root: Path, name: str, module: str, code: str, group: str = "bench.methods",
                 entry: str = "probe") -> None:
    """An installed distribution ``name`` 1.0 with one entry point naming ``module``."""
    (root / f"{module}.py").write_text(code)
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry} = {module}\n")


METHOD = """
from bench.methods.base import MethodNet
from bench.registry import METHODS

@METHODS.register({name!r}, "a probe")
def build(make_backbone, num_classes):
    return MethodNet(make_backbone(), num_classes)
"""


def one_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_plugin_cannot_replace_a_built_in_method(fresh, capsys):
    distribution(fresh, "bad-plugin", "bad_se", METHOD.format(name="se") + "\n" +
                 METHOD.format(name="probe-ok").replace("def build", "def build2"))
    err = one_error(capsys, ["list"])
    assert "plugin bad-plugin 1.0 (entry point bench.methods:probe = bad_se)" in err
    assert "method 'se' is already registered" in err
    assert METHODS.get("se").obj.__module__ == "bench.methods.se"  # the built-in stays


def test_a_plugin_that_fails_to_import_names_itself_and_the_error(fresh, capsys):
    distribution(fresh, "broken-plugin", "broken", METHOD.format(name="half") +
                 "raise RuntimeError('missing CUDA kernel')\n")
    err = one_error(capsys, ["list"])
    assert "plugin broken-plugin 1.0 (entry point bench.methods:probe = broken)" in err
    assert err.rstrip().endswith("RuntimeError: missing CUDA kernel")
    assert "half" not in METHODS  # what it registered before failing is rolled back


def test_an_entry_point_must_register_in_its_group(fresh, capsys):
    distribution(fresh, "wrong-group", "wrong_group", METHOD.format(name="wg"),
                 group="bench.backbones")
    assert "registers no backbone" in one_error(capsys, ["list"])


def test_unknown_and_empty_plugin_modules_are_refused(fresh, capsys):
    assert "no module named 'no_such_plugin'" in one_error(
        capsys, ["list", "--plugin", "no_such_plugin"])
    assert "plugin 'my-methods.py' is not a module name" in one_error(
        capsys, ["list", "--plugin", "my-methods.py"])
    (fresh / "empty_plugin.py").write_text("X = 1\n")
    assert "plugin module 'empty_plugin' registers nothing" in one_error(
        capsys, ["list", "--plugin", "empty_plugin"])


def test_run_time_plugins_are_marked_and_recorded(fresh, capsys, monkeypatch, tmp_path):
    (fresh / "env_plugin.py").write_text(METHOD.format(name="from-env"))
    (fresh / "flag_plugin.py").write_text(METHOD.format(name="from-flag"))
    monkeypatch.setenv(plugins.PLUGINS_ENV, " env_plugin ,")
    assert main(["list", "--plugin", "flag_plugin"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.strip().startswith("from-env ") and ln.endswith("[plugin: module env_plugin]")
               for ln in lines)
    assert any(ln.strip().startswith("from-flag ") and ln.endswith("[plugin: module flag_plugin]")
               for ln in lines)
    assert plugins.provenance([(METHODS, "from-flag"), (METHODS, "gap-fc")]) == [
        {"module": "flag_plugin", "distribution": None, "version": None}]


def test_workers_import_the_modules_that_registered_the_suites_entries(fresh):
    """A method registered by a module the user imported (a notebook's ``import mymethods``) is
    known to workers: they import that module; bench's and installed plugins' need nothing."""
    (fresh / "user_methods.py").write_text(METHOD.format(name="user-made"))
    import user_methods  # noqa: F401

    entries = [(METHODS, "user-made"), (METHODS, "gap-fc")]
    assert plugins.worker_modules(entries, remote=False) == ("user_methods",)
    assert plugins.provenance(entries) == [
        {"module": "user_methods", "distribution": None, "version": None}]


NOTEBOOK = """
import bench
from bench.methods.base import MethodNet
from bench.registry import METHODS

@METHODS.register("mine", "defined in __main__")
def build(make_backbone, num_classes):
    return MethodNet(make_backbone(), num_classes)

bench.run(["gap-fc", "mine"], preset="smoke", epochs=1, tasks=["accuracy"], jobs=2,
          out={out!r}, progress=False)
"""


@pytest.mark.parametrize("how, message", [
    ("-c", "method 'mine' is registered in __main__"),  # a notebook: no file to re-import
    ("stdin", "worker processes cannot start from this program: its main module '<stdin>'")])
def test_a_suite_its_workers_cannot_run_is_refused_before_launching(tmp_path, how, message):
    code = NOTEBOOK.format(out=str(tmp_path / "out"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv, stdin = ([sys.executable, "-c", code], None) if how == "-c" else (
        [sys.executable, "-"], code)
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and proc.stderr.rstrip().splitlines()[-1].startswith(
        "bench.errors.BenchError: "), proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (tmp_path / "out" / "results.sqlite").exists()  # refused before the store
