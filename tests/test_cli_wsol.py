import json

import numpy as np

from bench.cli import main

TOY = ["--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "1", "--no-progress"]


def test_saved_scoremaps_evaluate_to_the_stored_numbers(tmp_path, capsys):
    maps = tmp_path / "maps"
    assert main(["run", "--methods", "gap-fc", "--tasks", "wsol", "--out", str(tmp_path),
                 "--save-scoremaps", str(maps), *TOY]) == 0
    capsys.readouterr()
    main(["results", "--out", str(tmp_path), "--format", "json", "--per-seed"])
    stored = {r["metric"]: r["value"] for r in json.loads(capsys.readouterr().out)}
    (run_dir,) = [p for p in maps.iterdir() if p.is_dir()]
    assert main(["evaluate-wsol", "--metadata", str(run_dir / "metadata"), "--scoremaps", str(run_dir),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["maxboxacc_v2"] == stored["maxboxacc_v2"]
    assert result["pxap"] == stored["pxap"]
    assert set(result["maxboxacc"]) == {"30", "50", "70"}

    # a corrupted score map is named, one line, exit 2
    victim = next(run_dir.rglob("*.npy"))
    np.save(victim, np.full((4, 4), np.nan))
    code = main(["evaluate-wsol", "--metadata", str(run_dir / "metadata"), "--scoremaps", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and victim.name in err and "NaN" in err and err.count("\n") == 1


def test_a_task_option_that_changes_numbers_is_stored_beside_the_default(tmp_path, capsys):
    """--cam-curve-interval 0.5 on a store where wsol is done computes wsol[cam_curve_interval=0.5]
    and stores it beside the default; rerunning either skips it."""
    import sqlite3

    args = ["run", "--methods", "gap-fc", "--tasks", "wsol", "--out", str(tmp_path), *TOY]
    assert main(args) == 0
    assert main(args + ["--cam-curve-interval", "0.5"]) == 0
    db = sqlite3.connect(tmp_path / "results.sqlite")
    tasks = sorted(t for (t,) in db.execute("SELECT task FROM task_runs"))
    assert tasks == ["wsol", "wsol[cam_curve_interval=0.5]"]
    intervals = {t: json.loads(e)["cam_curve_interval"] for t, e in db.execute(
        "SELECT task, extra FROM metrics WHERE name = 'maxboxacc_v2'")}
    assert intervals == {"wsol": 0.01, "wsol[cam_curve_interval=0.5]": 0.5}
    ended = db.execute("SELECT ended FROM task_runs ORDER BY task").fetchall()
    assert main(args + ["--cam-curve-interval", "0.5"]) == 0
    assert db.execute("SELECT ended FROM task_runs ORDER BY task").fetchall() == ended
    capsys.readouterr()
    assert main(["results", "--out", str(tmp_path), "--format", "json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out)["summary"]
            if r["metric"] == "maxboxacc_v2"]
    assert len(rows) == 2 and len({r["setting"] for r in rows}) == 2
    for bad in ("0", "1", "7"):
        assert main(args + ["--cam-curve-interval", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("cam_curve_interval must lie in (0, 1)") == 3
