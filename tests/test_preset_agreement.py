"""benchmarks/preset_agreement.py's check of the headline verdicts on hand-made records: a
default's verdict the reference shares is confirmed, one it lacks is reported, one only the
reference gives is listed, and learning-speed verdicts are never held against the default."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import benchmark_script

SEEDS = range(5)
JITTER = (0.0, 0.3, -0.3, 0.6, -0.6)  # per seed, shared by every method
SPREAD = (0.0, 0.1, -0.1, 0.05, -0.05)  # per seed, of each method's difference to gap-fc (mean 0)


@pytest.fixture(scope="module")
def script():
    return benchmark_script("preset_agreement")


def group(shifts: dict[tuple[str, str], float]) -> SimpleNamespace:
    """Records of gap-fc, a and b over 5 seeds: 80% plus the (method, metric) shift; the
    differences to gap-fc spread a little around it, so that every paired t-test has a variance."""
    rows = []
    for metric in ("top1", "pxap", "learning_auc"):
        for m in ("gap-fc", "a", "b"):
            for s in SEEDS:
                offset = 0.0 if m == "gap-fc" else shifts.get((m, metric), 0.0) + SPREAD[s]
                rows.append({"method": m, "metric": metric, "setting": "", "seed": s,
                             "value": 80.0 + JITTER[s] + offset, "unit": "%"})
    return SimpleNamespace(records=pd.DataFrame(rows))


def test_verdicts_are_confirmed_missing_or_reference_only(script):
    default = group({("a", "top1"): 5.0, ("b", "top1"): -5.0, ("a", "learning_auc"): 8.0})
    reference = group({("a", "top1"): 4.0, ("b", "pxap"): -6.0})
    rows, unconfirmed = script.verdict_rows(default, reference, ["gap-fc", "a", "b"], "t")
    seen = {(r["metric"], r["method"]): (r["verdict, default"], r["verdict, reference"],
                                         r["default's verdict confirmed"]) for r in rows}
    same = "no detectable difference"
    assert seen == {("top-1", "a"): ("better", "better", "yes"),
                    ("top-1", "b"): ("worse", same, "no"),
                    ("PxAP", "b"): (same, "worse", "reference only"),
                    ("learning AUC", "a"): ("better", same, "schedule-bound")}
    assert unconfirmed == ["b top1"]


def test_recipe_changes_are_typed_and_bad_ones_named(script):
    from bench.errors import BenchError
    from bench.presets import PRESETS

    preset = PRESETS.get("quick").obj
    changes = script.recipe_changes(preset, ["lr=0.1", "batch_size=32", "nesterov=true"])
    assert changes == {"lr": 0.1, "batch_size": 32, "nesterov": True}
    for text, message in (("lr", "write NAME=VALUE"), ("batch_size=1.5", "expected an integer"),
                          ("bogus=1", "bogus is not a recipe setting"),
                          ("lr=-1", "lr must be positive"),
                          ("nesterov=maybe", "expected true or false")):
        with pytest.raises(BenchError, match=message):
            script.recipe_changes(preset, [text])


def test_recipe_cannot_set_what_the_schedules_fix(script, tmp_path, capsys):
    assert script.main(["--from-store", "--out", str(tmp_path), "--recipe", "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --recipe cannot set epochs") and err.count("\n") == 1
