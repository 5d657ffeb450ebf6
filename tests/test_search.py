import csv
import json

import optuna
import pytest

from nas.genome import Genome, param_count
from nas.known import designs_to_beat
from nas.objective import Objective
from nas.report import CSV_COLUMNS, count_states, records
from nas.search import TrialSlots, main, run_trials
from nas.space import DEFAULT_SPACE, load_space
from nas.study import PARENTS, StagedPruner, design_params, make_storage
from nas.train import DivergedError, Report, TrainConfig
from nas.trials import KNOWN_DESIGN, MACS_CONSTRAINT, PARAMS_CONSTRAINT, RETRAIN_CONSTRAINT, TrialRecord

# These tests are about the parameter budget and the pruner: no candidate may miss training for its MACs.
NO_MACS_CAP = 10**12


def fake_report(step: int, accuracy: float) -> Report:
    return Report(
        step=step,
        epoch=step / 2,
        val_accuracy=accuracy,
        val_loss=0.1,
        train_loss=0.1,
        train_accuracy=accuracy,
        lr=0.01,
        seconds=0.0,
    )


class SpyTrainer:
    """Stands in for `nas.train.train`: records what reaches it, reports made-up accuracies."""

    def __init__(self, accuracy=lambda genome: 90.0):
        self.models = []
        self.accuracy = accuracy

    def __call__(self, model, data, config, on_report):
        self.models.append(model)
        reports = []
        for step in range(1, config.epochs * config.reports_per_epoch + 1):
            reports.append(fake_report(step, self.accuracy(model)))
            on_report(reports[-1])
        return reports


def run(objective: Objective, n: int, seed: int = 0) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    run_trials(study, objective, TrialSlots(n).claim)
    return study


def pairs(study: optuna.Study) -> list[tuple[optuna.trial.FrozenTrial, TrialRecord]]:
    return [(t, TrialRecord.of(t)) for t in study.trials]


def test_over_budget_candidates_never_reach_the_trainer(tiny_data):
    space = load_space(DEFAULT_SPACE, max_params=6_000, max_macs=NO_MACS_CAP)
    spy = SpyTrainer()
    study = run(Objective(space, tiny_data, seed=0, train_fn=spy), 30)

    # A draw whose valid convs shrink the map away is no network: it has no size and never trains.
    sized = [(t, record) for t, record in pairs(study) if record.outcome != "infeasible"]
    over = [(t, record) for t, record in sized if record.params > 6_000]
    under = [(t, record) for t, record in sized if record.params <= 6_000]
    assert over and under, "the space should produce both kinds at this budget"
    assert len(spy.models) == len(under)
    assert all(sum(p.numel() for p in model.parameters()) <= 6_000 for model in spy.models)
    for t, record in over:
        assert record.outcome == "over budget"
        assert t.constraints[PARAMS_CONSTRAINT] == record.params - 6_000 > 0
        assert t.intermediate_values == {}
    for t, record in under:
        assert record.outcome == "complete" and t.constraints[PARAMS_CONSTRAINT] <= 0
        assert param_count(record.genome) == record.params


def test_a_macs_budget_is_a_second_constraint_checked_before_training(tiny_data):
    space = load_space(DEFAULT_SPACE, max_macs=1_500_000)
    spy = SpyTrainer()
    study = run(Objective(space, tiny_data, seed=0, train_fn=spy), 30)

    sized = [(t, record) for t, record in pairs(study) if record.outcome != "infeasible"]
    trained = [(t, record) for t, record in sized if record.outcome == "complete"]
    too_costly = [(t, record) for t, record in sized if record.params <= 20_000 and (record.macs or 0) > 1.5e6]
    assert trained and too_costly, "the space should produce both kinds at this budget"
    assert len(spy.models) == len(trained)
    for t, record in too_costly:
        assert record.outcome == "over budget"
        assert t.constraints[MACS_CONSTRAINT] == record.macs - 1_500_000 > 0
    for t, record in trained:
        assert t.constraints[MACS_CONSTRAINT] <= 0 and t.constraints[PARAMS_CONSTRAINT] <= 0
        assert record.train_seconds >= 0


def test_a_retrain_time_budget_is_a_third_constraint_checked_before_training(tiny_data, monkeypatch):
    space = load_space(DEFAULT_SPACE, max_macs=NO_MACS_CAP, max_retrain_seconds=100)
    asked = []

    def estimated_seconds(config, model, data, images):  # a second per hundred parameters
        asked.append((config.epochs, images))
        return sum(p.numel() for p in model.parameters()) / 100

    monkeypatch.setattr(TrainConfig, "estimated_seconds", estimated_seconds)
    spy = SpyTrainer()
    study = run(Objective(space, tiny_data, seed=0, train_fn=spy), 30)

    # Only a candidate within the parameter budget is timed.
    timed = [(t, record) for t, record in pairs(study) if record.estimated_retrain_seconds is not None]
    slow = [(t, record) for t, record in timed if record.estimated_retrain_seconds > 100]
    fast = [(t, record) for t, record in timed if record.estimated_retrain_seconds <= 100]
    assert slow and fast, "the space should produce both kinds at this budget"
    assert len(spy.models) == len(fast)
    for t, record in slow:
        assert record.outcome == "over budget" and t.intermediate_values == {}
        assert t.constraints[RETRAIN_CONSTRAINT] == pytest.approx(
            record.estimated_retrain_seconds - 100, abs=0.05
        )  # recorded to 0.1 s
        assert record.budget_exceeded.startswith("retrain estimated at")
    for t, record in fast:
        assert record.outcome == "complete" and t.constraints[RETRAIN_CONSTRAINT] <= 0
    # The retrain as nas.retrain runs it by default: the space's epochs, on every training image.
    assert set(asked) == {(19, len(tiny_data.train) + len(tiny_data.val))}


def test_pruner_stops_weak_trials_and_they_are_told_apart_from_budget_rejections(tiny_data):
    space = load_space(DEFAULT_SPACE, max_macs=NO_MACS_CAP)
    # Accuracy rises with size, so small candidates fall below the median and get pruned.
    spy = SpyTrainer(accuracy=lambda model: sum(p.numel() for p in model.parameters()) / 1000)
    objective = Objective(space, tiny_data, seed=0, train_fn=spy)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=3))
    run_trials(study, objective, TrialSlots(25).claim)
    counts = count_states(records(study.trials))
    assert counts["pruned"] > 0 and counts["complete"] > 0
    assert sum(counts.values()) == 25
    final_step = space.trial.epochs * space.trial.reports_per_epoch
    for t in study.trials:
        if TrialRecord.of(t).outcome == "pruned":
            assert max(t.intermediate_values) < final_step  # a finished run is never thrown away


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_a_known_design_runs_its_whole_trial_where_any_other_is_pruned(tiny_data):
    space = load_space(DEFAULT_SPACE, max_macs=NO_MACS_CAP)
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    design = designs_to_beat(space)[0]
    study.enqueue_trial(design_params(design, space), user_attrs={KNOWN_DESIGN: design.name})
    study.enqueue_trial(design_params(design, space))  # the same net, not marked as a known design
    run_trials(study, Objective(space, tiny_data, seed=0, train_fn=SpyTrainer()), TrialSlots(2).claim)
    assert [TrialRecord.of(t).outcome for t in study.trials] == ["complete", "pruned"]


def test_diverged_trial_fails_with_reason_and_the_study_goes_on(tiny_data):
    calls = []

    def diverging(model, data, config, on_report):
        calls.append(1)
        if len(calls) == 1:
            raise DivergedError("loss became nan at epoch 1, step 3")
        return [fake_report(1, 95.0)]

    space = load_space(DEFAULT_SPACE, max_params=100_000, max_macs=NO_MACS_CAP)
    study = run(Objective(space, tiny_data, seed=0, train_fn=diverging), 3)
    assert [TrialRecord.of(t).outcome for t in study.trials] == ["failed", "complete", "complete"]
    assert "nan" in TrialRecord.of(study.trials[0]).fail_reason


def test_tiny_search_writes_best_json_and_a_rerun_adds_trials(tiny_dir, tiny_space, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--trials", "3", "--space", str(tiny_space), "--data-dir", str(tiny_dir), "--val-size", "300",
            "--out", str(out), "--study", "tiny", "--jobs", "2"]  # fmt: skip
    assert main(argv) == 0
    best = json.loads((out / "best.json").read_text())
    assert param_count(Genome.from_dict(best["genome"])) == best["params"] <= 20_000 == best["max_params"]
    assert 0 <= best["val_accuracy"] <= 100
    assert best["space"]["text"] == tiny_space.read_text()
    assert {"torch", "optuna"} <= set(best["versions"])
    assert best["data"]["dir"] == str(tiny_dir.resolve())

    assert main(argv) == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(trials) == 6 and sorted(t.number for t in trials) == list(range(6))
    assert all(t.state.is_finished() for t in trials)
    csv_rows = (out / "trials.csv").read_text().splitlines()
    assert len(csv_rows) == 7 and csv_rows[0] == ",".join(CSV_COLUMNS) and "train_seconds" in CSV_COLUMNS


@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--trials", "-3"], "--trials must be at least 1"),
        (["--max-params", "50"], "over the budget of 50"),
        (["--data-dir", "/nonexistent/mnist"], "no such directory"),
        (["--storage", "postgresql://user:secret@127.0.0.1:1/db"], "cannot open storage"),
        (["--out", "/proc/nas-results"], "choose a writable --out"),
        (["--mutation-share", "1.5"], "--mutation-share must lie in [0, 1], got 1.5"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(extra, problem, tmp_path, capsys):
    assert main(["--out", str(tmp_path / "o"), *extra]) == 2  # a later --out overrides this one
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1 and "Traceback" not in err
    assert "secret" not in err


def test_a_retrain_time_budget_no_architecture_can_meet_is_refused_before_any_trial(
    tiny_dir, tiny_space, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(TrainConfig, "estimated_seconds", lambda config, model, data, images: 400.0)
    argv = ["--trials", "1", "--space", str(tiny_space), "--data-dir", str(tiny_dir), "--val-size", "300",
            "--out", str(tmp_path), "--study", "s", "--jobs", "1"]  # fmt: skip
    assert main([*argv, "--max-retrain-seconds", "300"]) == 2
    err = capsys.readouterr().err
    assert "would retrain in about 400 s" in err and "--max-retrain-seconds" in err and err.count("\n") == 1
    assert not (tmp_path / "study.journal").exists()
    # Out of reach of every candidate drawn (as the workers estimate it, for real): said so, not "run it again".
    monkeypatch.setattr("nas.search.check_retrain_reachable", lambda space, data, precision: None)
    assert main([*argv, "--max-retrain-seconds", "0.001", "--study", "t"]) == 0
    assert "all 1 were over budget or no network; loosen the budgets" in capsys.readouterr().out


def test_resuming_with_another_space_is_refused(tiny_dir, tiny_space, tmp_path, capsys):
    base = ["--trials", "1", "--space", str(tiny_space), "--data-dir", str(tiny_dir), "--val-size", "300",
            "--out", str(tmp_path), "--study", "s", "--jobs", "1"]  # fmt: skip
    assert main([*base, "--max-params", "8000"]) == 0
    journal = (tmp_path / "study.journal").read_bytes()
    assert main([*base, "--max-params", "9000"]) == 2
    assert "another search space or budget" in capsys.readouterr().err
    assert main([*base, "--max-params", "8000", "--max-retrain-seconds", "1e6"]) == 2
    assert "another search space or budget" in capsys.readouterr().err
    tiny_space.write_text(tiny_space.read_text().replace("epochs = 1", "epochs = 2"))
    assert main([*base, "--max-params", "8000"]) == 2  # a setting in the file changed
    assert "another search space or budget" in capsys.readouterr().err
    assert (tmp_path / "study.journal").read_bytes() == journal  # nothing lost or added


def test_the_spaces_search_seconds_stop_the_search_from_starting_trials(tiny_dir, tiny_space, tmp_path, capsys):
    tiny_space.write_text(
        tiny_space.read_text().replace("max_params = 20_000", "max_params = 20_000\nsearch_seconds = 0.001")
    )
    argv = ["--trials", "3", "--space", str(tiny_space), "--data-dir", str(tiny_dir), "--val-size", "300",
            "--out", str(tmp_path), "--study", "s", "--jobs", "1"]  # fmt: skip
    assert main(argv) == 0  # the workers start after the deadline has passed
    assert "no trial completed yet" in capsys.readouterr().out
    assert main([*argv, "--timeout", "600"]) == 0  # the command line overrides the file
    assert (tmp_path / "best.json").is_file()


def test_an_enqueued_trial_waits_then_is_logged_by_the_run_that_runs_it(tiny_dir, tiny_space, tmp_path, capsys):
    argv = ["--trials", "1", "--space", str(tiny_space), "--data-dir", str(tiny_dir), "--val-size", "300",
            "--out", str(tmp_path), "--study", "s", "--jobs", "1"]  # fmt: skip
    assert main(argv) == 0
    study = optuna.load_study(study_name="s", storage=make_storage(str(tmp_path / "study.journal")))
    study.enqueue_trial(study.trials[0].params, user_attrs={KNOWN_DESIGN: "again"})  # as a new study's known designs
    assert main([*argv, "--timeout", "0.001"]) == 0  # starts no trial
    assert (tmp_path / "trials.csv").read_text().splitlines()[2].startswith("1,waiting,")
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 trials so far" in out and "trial 1: complete" in out and "known design again" in out
    assert "trial 0:" not in out  # finished before this run


def test_once_enough_trials_complete_a_search_with_mutations_runs_mutants_of_the_best(
    tiny_dir, tiny_space, tmp_path, capsys
):
    argv = ["--trials", "6", "--space", str(tiny_space), "--data-dir", str(tiny_dir), "--val-size", "300",
            "--out", str(tmp_path), "--study", "s", "--jobs", "1", "--mutation-share", "1"]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    mutants = [row for row in rows if row["mutation"]]
    assert mutants and all(int(row["number"]) >= PARENTS for row in mutants)  # the first ones draw from the space
    assert f"mutation {mutants[0]['mutation']}" in capsys.readouterr().out


def test_the_staged_pruner_stops_only_clear_failures_after_the_first_epoch_then_below_the_median():
    study = optuna.create_study(direction="maximize")
    for first, second in [(60, 80), (90, 96), (92, 97), (94, 97.5), (95, 98), (96, 98.3)]:
        study.add_trial(
            optuna.trial.create_trial(value=second + 0.5, intermediate_values={1: first, 2: second})
        )  # fmt: skip
    pruner = StagedPruner(reports_per_epoch=1)

    def stops(*scores: float) -> bool:
        running = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING, intermediate_values=dict(enumerate(scores, start=1))
        )
        return pruner.prune(study, running)

    assert not stops(91.0)  # below the median (93) of the first epoch, within the top three quarters
    assert stops(85.0)  # in the bottom quarter
    assert stops(91.0, 97.0)  # below the second epoch's median, 97.25
    assert not stops(91.0, 97.5)
