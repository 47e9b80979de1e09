"""benchmarks/choose_default_recipe.py without training: the stored study reproduces the quick
preset's recipe, bad input is one error line with exit code 2, and a study whose every candidate
failed says so and stores nothing as chosen."""
from __future__ import annotations

import dataclasses
import shutil

import optuna
import pytest
from conftest import benchmark_script

from bench.presets import PRESETS



@pytest.fixture(scope="module")
def script():
    return benchmark_script("choose_default_recipe")


def test_the_stored_study_reproduces_the_quick_recipe(script, tmp_path, capsys):
    study = tmp_path / "study.jsonl"
    shutil.copy(script.STUDY, study)  # reading must not change the committed file
    assert script.main(["--study", str(study)]) == 0
    out = capsys.readouterr().out
    chosen = script.open_study(study, script.SPACE, create=False).user_attrs["chosen"]
    quick = dataclasses.asdict(PRESETS.get("quick").obj)
    values = script.preset_values(chosen["params"])
    assert {k: quick[k] for k in values} == values
    assert chosen["worst"] == min(chosen["holdout_top1"].values())
    assert f"chosen (trial {chosen['trial']})" in out
    assert "pruned" in out and "complete" in out  # the table of candidates


@pytest.mark.parametrize("args, message", [
    (["--space", "momentum=0.5:0.9"], "space 'momentum' is not a searched parameter"),
    (["--space", "lr=0.5:0.1"], "low must not exceed high"),
    (["--space", "lr=0.01:inf"], "bounds must be finite"),
    (["--space", "weight_decay=nan:0.1"], "bounds must be finite"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--dataset", "digits-clutter[bogus=1]"], "unknown option 'bogus'"),
])
def test_bad_input_is_one_error_line_and_exit_2(script, tmp_path, capsys, args, message):
    study = tmp_path / "study.jsonl"
    assert script.main(["--study", str(study), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not study.exists()


def test_a_study_whose_every_candidate_failed_stores_nothing_as_chosen(script, tmp_path, capsys):
    path = tmp_path / "study.jsonl"
    study = script.open_study(path, script.SPACE, create=True)
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert script.main(["--study", str(path)]) == 1
    assert "no candidate completed (2 tried" in capsys.readouterr().err
    assert "chosen" not in script.open_study(path, script.SPACE, create=False).user_attrs


def test_a_study_of_other_data_is_not_continued_with_the_preset_s(script, tmp_path, capsys):
    path = tmp_path / "study.jsonl"
    other = "digits-clutter[canvas=20,clutter=8,clutter_contrast=0.7,max_size=14,min_size=8]"
    study = script.open_study(path, script.SPACE, create=True, dataset=other)
    assert study.user_attrs["base_recipe"]["dataset"] == other
    assert script.open_study(path, script.SPACE, create=False, dataset=other).study_name
    assert script.main(["--study", str(path)]) == 2
    assert "stored with another base_recipe" in capsys.readouterr().err
