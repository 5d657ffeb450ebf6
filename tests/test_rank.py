import json

import pytest

from nas import best
from nas.errors import UserError
from nas.machine import this_cpu
from nas.rank import _earlier_retrain, best_retrain, main, pick_trials, ranks, seed_folder, spearman, spearman_by_report
from nas.trials import TrialRecord
from tests.helpers import TINY_GENOME, tiny_study


def test_ranks_average_ties():
    assert ranks([10.0, 20.0, 20.0, 5.0]) == [2.0, 3.5, 3.5, 1.0]


def test_spearman_matches_the_textbook_figures():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(
        1 - 6 * 2 / (4 * (16 - 1))
    )  # no ties: 1 - 6Σd²/n(n²-1)
    with pytest.raises(ValueError, match="every value"):
        spearman([1, 2, 3], [5, 5, 5])


def record(number: int, outcome: str, accuracy: float | None, reports: tuple[float, ...] = ()) -> TrialRecord:
    return TrialRecord(
        number, outcome, accuracy, reports, TINY_GENOME, 1000, 10_000, None, None, None, 3.0, 1.0, "", None, None
    )  # fmt: skip


def test_the_picked_trials_span_the_ranking_from_the_winner_to_the_last():
    trials = [record(n, "complete", 90.0 + n) for n in range(10)] + [record(10, "pruned", 99.9)]
    picked = pick_trials(trials, 4, top=False)
    assert [t.number for t in picked] == [9, 6, 3, 0]  # ranks 0, 3, 6, 9 of ten; the pruned one never
    assert [t.number for t in pick_trials(trials, 3, top=True)] == [9, 8, 7]
    with pytest.raises(UserError, match="10 completed trials, fewer than the 11"):
        pick_trials(trials, 11, top=False)
    with pytest.raises(UserError, match="fewer --top"):
        pick_trials(trials, 11, top=True)
    assert [t.number for t in pick_trials(trials, 2, top=False, numbers=(2, 7))] == [7, 2]  # best first
    with pytest.raises(UserError, match="trial 10 is not a completed trial"):
        pick_trials(trials, 2, top=False, numbers=(2, 10))


def test_each_report_ranks_the_trials_against_the_retrains():
    trials = [record(0, "complete", 98.0, (90.0, 95.0, 98.0)), record(1, "complete", 97.0, (91.0, 95.0, 97.0)),
              record(2, "complete", 96.0, (92.0, 95.0, 96.0))]  # fmt: skip
    assert spearman_by_report(trials, [99.3, 99.2, 99.1]) == [
        {"trial_epochs": 1.0, "spearman": -1.0},
        {"trial_epochs": 2.0, "spearman": None},  # a three-way tie ranks nothing
        {"trial_epochs": 3.0, "spearman": 1.0},
    ]


def test_only_a_measuring_retrain_of_the_same_length_seed_precision_and_cpu_is_read_back(tmp_path):
    metrics = tmp_path / "metrics.json"
    assert _earlier_retrain(metrics, 15, seed=0, precision="auto") is None
    earlier = {"epochs": 15, "val_accuracy": 99.3, "seed": 0, "train": {"precision": "fp32"}}
    metrics.write_text(json.dumps(earlier))
    assert _earlier_retrain(metrics, 15, seed=0, precision="auto") == earlier
    assert _earlier_retrain(metrics, 15, seed=0, precision="fp32") == earlier
    assert _earlier_retrain(metrics, 15, seed=0, precision="bf16") is None  # forced to another precision
    assert _earlier_retrain(metrics, 19, seed=0, precision="auto") is None  # another length
    assert _earlier_retrain(metrics, 15, seed=1, precision="auto") is None  # another seed
    metrics.write_text(json.dumps(earlier | {"val_accuracy": None}))  # a final retrain: trained on all
    assert _earlier_retrain(metrics, 15, seed=0, precision="auto") is None
    here = earlier | {"machine": this_cpu().describe()}
    metrics.write_text(json.dumps(here))
    assert _earlier_retrain(metrics, 15, seed=0, precision="auto") == here
    metrics.write_text(json.dumps(earlier | {"machine": f"not {this_cpu().describe()}"}))
    assert _earlier_retrain(metrics, 15, seed=0, precision="auto") is None  # another CPU: another seed, in effect


def test_seed_0_keeps_the_trial_folder_and_other_seeds_go_below_it(tmp_path):
    assert seed_folder(tmp_path, 6, 0) == tmp_path / "trial6"
    assert seed_folder(tmp_path, 6, 2) == tmp_path / "trial6" / "seeds" / "seed2"


def row(trial: int, *per_seed: float) -> dict:
    return {
        "trial": trial,
        "retrain_val_accuracy": sum(per_seed) / len(per_seed),
        "retrain_val_accuracy_per_seed": per_seed,
    }


def test_a_retrain_replaces_the_searchs_pick_only_by_a_lead_beyond_the_seeds_spread():
    """Rows come best trial score first. The 8k case: one seed put trial 6 ahead of the search's pick by 7 images."""
    assert best_retrain([row(0, 99.40), row(6, 99.47)]) == {
        "trial": 6, "lead_over_trial": 0, "lead_points": 0.07, "seed_spread": None, "lead_beyond_seed_spread": None,
        "pick": 0, "best_json": "trial0/best.json",
    }  # fmt: skip
    # Three seeds on one CPU since: the search's pick ahead, and a lead within the spread in any case.
    kept = best_retrain([row(0, 99.45, 99.42, 99.32), row(6, 99.39, 99.33, 99.30), row(2, 99.34, 99.27, 99.41)])
    assert kept["trial"] == 0 and kept["pick"] == 0 and kept["lead_over_trial"] in (6, 2)
    toss_up = best_retrain([row(0, 99.40, 99.48, 99.44), row(6, 99.47, 99.40, 99.47), row(2, 99.1, 99.1, 99.1)])
    assert toss_up["trial"] == 6 and toss_up["lead_over_trial"] == 0  # measured against the search's pick
    assert toss_up["lead_points"] == 0.007 and toss_up["seed_spread"] == 0.08
    assert toss_up["lead_beyond_seed_spread"] is False and toss_up["pick"] == 0
    clear = best_retrain([row(0, 99.30, 99.32, 99.34), row(6, 99.47, 99.45, 99.49)])
    assert clear["lead_points"] == 0.15 and clear["lead_beyond_seed_spread"] is True
    assert clear["pick"] == 6 and clear["best_json"] == "trial6/best.json"
    # A lead is measured against the search's pick, not against the runner-up (trial 6 here).
    assert best_retrain([row(0, 99.20, 99.20), row(2, 99.60, 99.61), row(6, 99.50, 99.50)])["lead_over_trial"] == 0
    assert best_retrain([row(3, 99.4, 99.5), row(4, 99.5, 99.4)])["pick"] == 3  # a tie: the better trial score


@pytest.mark.timeout(300)
def test_a_tiny_study_is_retrained_across_its_range_and_a_rerun_reads_the_retrains_back(
    tiny_dir, tiny_space, tmp_path, capsys
):
    study = tmp_path / "study"
    tiny_space.write_text(tiny_space.read_text() + "\n[retrain]\nepochs = 1\n")
    tiny_study(tiny_dir, tiny_space, study)
    # Two retrains at once, each in a one-thread process of its own, as long as the space plans.
    assert main([str(study / "best.json"), "--retrains", "3", "--jobs", "2"]) == 0
    assert capsys.readouterr().out.count("% validation accuracy after") == 3  # each job's result, as it ends
    ranking = json.loads((study / "ranking" / "ranking.json").read_text())
    assert len(ranking["trials"]) == 3
    assert ranking["retrain_epochs"] == 1
    assert -1 <= ranking["spearman"] <= 1
    assert ranking["spearman_by_report"][-1]["spearman"] == ranking["spearman"]  # the last report is the score
    scores = [row["trial_val_accuracy"] for row in ranking["trials"]]
    assert scores == sorted(scores, reverse=True)
    for row in ranking["trials"]:
        metrics = json.loads((study / "ranking" / f"trial{row['trial']}" / "metrics.json").read_text())
        assert row["retrain_val_accuracy_per_seed"] == [metrics["val_accuracy"]]  # seed 0 only
        assert metrics["val_accuracy"] == pytest.approx(row["retrain_val_accuracy"], abs=1e-3)  # on the split only
        assert metrics["data"]["trained_on"].startswith("split")
        assert metrics["train"]["processes"] == 1  # a job trains in its one process
        assert metrics["test_accuracy"] is None  # a measuring run: the test set stays unread
        assert not list((study / "ranking" / f"trial{row['trial']}").glob("*.pt*"))  # and nothing is exported

    capsys.readouterr()
    assert main([str(study / "best.json"), "--jobs", "1", "--retrains", "3", "--epochs", "1"]) == 0
    assert capsys.readouterr().out.count("retrained before") == 3
    assert json.loads((study / "ranking" / "ranking.json").read_text()) == ranking
    # Another length: redone.
    assert main([str(study / "best.json"), "--jobs", "1", "--retrains", "3", "--epochs", "2"]) == 0
    assert "retrained before" not in capsys.readouterr().out

    # The two best trials, to pick between: the winner's retrain of this length is read back.
    assert main([str(study / "best.json"), "--jobs", "1", "--top", "2", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("retrained before") == 1
    top = json.loads((study / "ranking" / "top.json").read_text())
    assert top["picked"] == "the 2 best trials"
    assert len(top["trials"]) == 2 and top["trials"][0]["trial"] == best.load(study / "best.json").found["trial"]
    assert top["trials"][1]["trial_val_accuracy"] >= ranking["trials"][1]["trial_val_accuracy"]  # second, not middle
    assert json.loads((study / "ranking" / "ranking.json").read_text())["retrain_epochs"] == 2  # the spread's own
    first = max(top["trials"], key=lambda row: row["retrain_val_accuracy"])
    assert top["best_retrain"]["trial"] == first["trial"]
    searched = top["trials"][0]["trial"]
    assert top["best_retrain"]["seed_spread"] is None and top["best_retrain"]["pick"] == searched  # one seed: it stays
    assert top["best_retrain"]["best_json"] == f"trial{searched}/best.json"
    assert best.load(study / "ranking" / top["best_retrain"]["best_json"]).retrain_epochs == 1  # as its space plans
    pick = study / "ranking" / f"trial{searched}"  # its final retrain goes beside, not over, the measuring one
    assert f"next: python -m nas.retrain {pick / 'best.json'} --out {pick / 'final'}" in printed

    # Two seeds each: seed 0 is read back, seed 1 lands below the trial's folder, and the mean ranks.
    assert main([str(study / "best.json"), "--jobs", "1", "--top", "2", "--epochs", "2", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("retrained before") == 2 and "seeds' spread" in printed
    top = json.loads((study / "ranking" / "top.json").read_text())
    assert "the mean of seeds 0-1" in top["retrained_on"]
    for row in top["trials"]:
        folder = study / "ranking" / f"trial{row['trial']}"
        seed1 = json.loads((folder / "seeds" / "seed1" / "metrics.json").read_text())
        assert seed1["seed"] == 1 and seed1["test_accuracy"] is None
        per_seed = [json.loads((folder / "metrics.json").read_text())["val_accuracy"], seed1["val_accuracy"]]
        assert row["retrain_val_accuracy_per_seed"] == per_seed
        assert row["retrain_val_accuracy"] == pytest.approx(sum(per_seed) / 2, abs=1e-3)
    assert top["best_retrain"]["seed_spread"] is not None

    # Named trials share those retrains and get their own summary.
    numbers = sorted(row["trial"] for row in top["trials"])
    assert (
        main([str(study / "best.json"), "--jobs", "1", "--trials", *map(str, numbers), "--epochs", "2", "--seeds", "2"])
        == 0
    )
    assert capsys.readouterr().out.count("retrained before") == 4
    named = json.loads((study / "ranking" / f"trials{numbers[0]}-{numbers[1]}.json").read_text())
    assert named["picked"] == f"trials {numbers[0]}, {numbers[1]}, named"
    assert named["trials"] == top["trials"]


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--retrains", "1"], "--retrains must be at least 2"),
        (["--top", "1"], "--top must be at least 2"),
        (["--trials", "3", "3"], "--trials must be at least 2"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        ([], "no study journal at"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(extra, problem, tmp_path, capsys):
    best = tmp_path / "best.json"
    best.write_text("{}")
    assert main([str(best), *extra]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
