import json

import numpy as np

from bench.cli import main

TOY = ["--dataset", "toy-quadrants", "--backbone", "resnet8", "--epochs", "1", "--no-progress"]


def test_saved_scoremaps_evaluate_to_the_stored_numbers(tmp_path, capsys):
    maps = tmp_path / "maps"
    assert main(["run", "--methods", "gap-fc", "--tasks", "wsol", "--out", str(tmp_path),
                 "--save-scoremaps", str(maps), *TOY]) == 0
    capsys.readouterr()
    main(["results", "--out", str(tmp_path), "--format", "json"])
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
