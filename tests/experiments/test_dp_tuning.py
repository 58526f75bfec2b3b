"""dp_tuning's grid: server momentum sweeps BCS-FL only, and old rows (no column) count as momentum 0."""

import math

from experiments import dp_tuning


def _args(*argv):
    return dp_tuning.build_parser().parse_args(list(argv))


def test_server_momenta_multiply_bcsfl_runs_only_and_the_baseline_follows_them():
    runs = dp_tuning.plan(_args("--strategies", "bcsfl,fedavg", "--server-momenta", "0,0.5", "--baseline"))
    bcsfl = [(r["server_momentum"], r["target_epsilon"]) for r in runs if r["strategy"] == "bcsfl"]
    fedavg = [(r["server_momentum"], r["target_epsilon"]) for r in runs if r["strategy"] == "fedavg"]
    assert sorted(bcsfl) == [(0.0, 3.0), (0.0, math.inf), (0.5, 3.0), (0.5, math.inf)]
    assert sorted(fedavg) == [(0.0, 3.0), (0.0, math.inf)]


def test_a_row_written_before_the_server_momentum_column_is_the_same_setting_as_momentum_zero():
    run = dp_tuning.plan(_args())[0]
    old = {k: str(v) for k, v in run.items() if k != "server_momentum"}
    assert dp_tuning._key(old) == dp_tuning._key(run)
    assert dp_tuning._key(dict(old, server_momentum="0.5")) != dp_tuning._key(run)


def test_the_baseline_without_dp_is_one_row_whatever_the_accountant():
    rdp = [r for r in dp_tuning.plan(_args("--baseline")) if r["target_epsilon"] == math.inf]
    prv = [r for r in dp_tuning.plan(_args("--baseline", "--accountant", "prv")) if r["target_epsilon"] == math.inf]
    assert [dp_tuning._key(r) for r in rdp] == [dp_tuning._key(r) for r in prv]
    assert [r["accountant"] for r in dp_tuning.plan(_args("--accountant", "prv"))] == ["prv"]


def test_baseline_models_give_one_run_without_dp_each_in_its_own_folder():
    runs = [r for r in dp_tuning.plan(_args("--baseline", "--baseline-models", "default,scatter", "--models", "scatter"))
            if r["target_epsilon"] == math.inf]
    assert [r["model"] for r in runs] == ["default", "scatter"]
    assert len({dp_tuning._key(r) for r in runs}) == 2 and len({dp_tuning.run_name(r) for r in runs}) == 2
    assert [r["model"] for r in dp_tuning.plan(_args("--baseline")) if r["target_epsilon"] == math.inf] == ["default"]


def test_each_privacy_curve_takes_its_own_recipe_and_ends_at_the_default_client_without_dp():
    from experiments.privacy_pruning import RECIPES, _in_recipe

    label, scatter = RECIPES[0]
    assert "ScatterNet" in label and scatter["model"] == "scatter"
    dp_row = dict(scatter, momentum="0", target_epsilon="3")
    assert _in_recipe(dp_row, scatter) and not _in_recipe(dict(dp_row, model="default"), scatter)
    no_dp = dict(momentum="0", target_epsilon="inf", server_momentum="0.5")
    assert _in_recipe(dict(no_dp, model="default"), scatter)
    assert not _in_recipe(dict(no_dp, model="scatter"), scatter)  # one end point per curve: the reference client
