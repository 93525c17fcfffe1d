"""select.policy=auto: the pilot rule on the perceptron (known answer), on planted tables, and end to end."""
import json

import pandas as pd
import pytest

from datacull.errors import DatacullError
from datacull.policies.auto import AutoSettings, decide, perceptron_evaluator, run_pilot
from datacull.select import check_budget, select_mask
from datacull.stages.score import score
from datacull.stages.select import select
from datacull.stages.train import train
from datacull.store import parquet_config

TINY_TRAIN = ["model=resnet8", "model.width=4", "train.epochs=1", "train.batch_size=64"]


@pytest.mark.parametrize("alpha_tot, expected", [(1.0, "keep_easy"), (2.0, "keep_easy"),
                                                 (12.0, "keep_hard"), (16.0, "keep_hard")])
def test_perceptron_pilot_keeps_easy_when_scarce_and_hard_when_abundant(alpha_tot, expected):
    # Sorscher et al. 2022, Fig. 1 (theta = 0, perfect metric): the answer the rule must reproduce
    N = 100
    settings = AutoSettings(fractions=(0.3, 0.6), sizes=(int(alpha_tot * N),), seeds=tuple(range(8)), margin=0.0)
    table = run_pilot(perceptron_evaluator(N, theta_deg=0.0), settings)
    decision = decide(table, settings, n_full=int(alpha_tot * N), choose_fraction=True)
    assert decision["policy"] == expected, decision["rule"]
    assert len(table) == 8 * (1 + 3 * 2)
    assert decision["fraction"] in (0.3, 0.6, 1.0)


def _planted(errors: dict) -> pd.DataFrame:
    """A pilot table from {(size, policy, fraction): error}, one seed."""
    return pd.DataFrame([{"size": n, "seed": 0, "policy": p, "fraction": f, "n_train": int(n * f), "test_error": e}
                         for (n, p, f), e in errors.items()])


def test_rule_margin_fraction_and_crossover_on_a_planted_table():
    settings = AutoSettings(fractions=(0.3, 0.6), sizes=(100, 1000), seeds=(0,), margin=0.01, tolerance=0.02)
    errors = {}
    for n, gap in ((100, 0.08), (1000, 0.04)):
        errors.update({(n, "none", 1.0): 0.20, (n, "random", 0.3): 0.30, (n, "random", 0.6): 0.25,
                       (n, "keep_easy", 0.3): 0.25, (n, "keep_easy", 0.6): 0.21,
                       (n, "keep_hard", 0.3): 0.25 + gap, (n, "keep_hard", 0.6): 0.21 + gap})
    decision = decide(_planted(errors), settings, n_full=50_000, choose_fraction=True)
    assert decision["policy"] == "keep_easy" and decision["fraction"] == 0.6  # 0.21 <= 0.20 + 0.02 < 0.25
    # gap 0.08 -> 0.04 over one decade in n: zero one more decade on, near n = 10,000 < the full 50,000
    assert decision["crossover_estimate"] == 10_000 and any("re-run the pilot" in n for n in decision["notes"])
    tight = AutoSettings(fractions=(0.3, 0.6), sizes=(100, 1000), seeds=(0,), margin=0.05, tolerance=0.0)
    strict = decide(_planted(errors), tight, n_full=1000, choose_fraction=True)
    assert strict["policy"] == "random" and strict["fraction"] == 1.0  # 0.23 vs 0.275: within margin 0.05


def test_fraction_auto_needs_policy_auto_and_auto_is_not_a_direct_policy():
    with pytest.raises(DatacullError, match="needs select.policy=auto"):
        check_budget("auto", None, "keep_hard")
    assert check_budget("auto", None, "auto") == ("auto", None)
    with pytest.raises(DatacullError, match="resolved by the select stage"):
        select_mask(pd.Series([0.1, 0.2]).to_numpy(), pd.Series([0, 1]).to_numpy(), 1, "auto")


def test_select_auto_end_to_end_writes_evidence_and_reuses_the_pilot(make_cfg, caplog):
    overrides = ["metrics=[ssp]", "select.policy=auto", "select.fraction=auto", "select.auto.pilot_size=128",
                 "select.auto.fractions=[0.5]", "select.auto.seeds=[0]", *TINY_TRAIN]
    cfg = make_cfg(*overrides)
    score(cfg)
    path = select(cfg)["selection"]
    table = pd.read_parquet(path)
    evidence = json.loads((path.parent / "auto.json").read_text())
    decision = evidence["decision"]
    assert decision["policy"] in ("keep_easy", "keep_hard", "random") and decision["fraction"] in (0.5, 1.0)
    assert f"-{decision['policy']}-f{decision['fraction']:g}-" in path.parent.name
    assert int(table["kept"].sum()) == round(decision["fraction"] * 256)
    pilot = pd.read_csv(path.parent / "auto.csv")
    assert sorted(pilot["policy"]) == ["keep_easy", "keep_hard", "none", "random"] and (pilot["size"] == 128).all()
    assert parquet_config(path)["summary"]["auto"]["decision"]["rule"] == decision["rule"]
    caplog.clear()
    with caplog.at_level("INFO"):
        assert select(make_cfg(*overrides))["selection"] == path
    assert caplog.text.count("not retrained") == 4
    row = json.loads(train(make_cfg(*overrides))["row"].read_text())  # train resolves auto the same way
    assert row["n_train"] == int(table["kept"].sum()) and row["policy"] in (decision["policy"], "all")
    with pytest.raises(DatacullError, match="needs select.policy=auto"):
        select(make_cfg("metrics=[ssp]", "select.fraction=auto"))
