"""Known designs as data: each one is a draw of the spaces that can hold it, and a new study starts with them."""

import threading

import optuna
import pytest

from nas import study as study_module
from nas.errors import UserError
from nas.known import known_designs
from nas.objective import genome_params, sample_genome, sample_recipe
from nas.space import SPACES_DIR, load_space, parse_space
from nas.study import design_params, designs_to_beat, open_study
from nas.trials import TrialRecord
from tests.helpers import TINY_SPACE

# The 20k space with room for every design's size and dropout (some published ones have none).
WIDE_OPEN = parse_space(
    (SPACES_DIR / "mnist_20k.toml").read_text().replace("dropout = [0.01, 0.08]", "dropout = [0.0, 0.5]"), "wide"
).with_overrides(max_params=10**6, max_macs=10**12)


@pytest.mark.parametrize("design", known_designs(), ids=lambda d: d.name)
def test_a_design_enqueued_as_parameters_is_drawn_as_exactly_that_genome(design):
    trial = optuna.trial.FixedTrial(genome_params(design.genome))
    assert sample_genome(trial, WIDE_OPEN.architecture) == design.genome


def test_a_new_study_starts_with_the_designs_that_fit_and_only_once(tmp_path):
    space = load_space(SPACES_DIR / "mnist_20k.toml")
    fitting = designs_to_beat(space)
    assert "seed-001" not in [d.name for d in fitting]  # 18,106 params but 5.1M MACs
    url = str(tmp_path / "study.journal")
    study = open_study("s", url, space, "median", seed=0)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [design_params(d, space) for d in fitting]
    assert [TrialRecord.of(t).known_design for t in waiting] == [d.name for d in fitting]
    assert len(open_study("s", url, space, "median", seed=0).trials) == len(fitting)  # resuming enqueues nothing
    # Only the 5k space's budget leaves every published design out.
    assert [d.name for d in designs_to_beat(load_space(SPACES_DIR / "mnist_8k.toml"))] == [
        "snehanshu-raj-model-3", "shwethaamrutha-s6", "seed-004",
    ]  # fmt: skip
    assert designs_to_beat(load_space(SPACES_DIR / "mnist_5k.toml")) == []


def test_a_worker_that_loses_the_race_to_create_waits_for_the_creators_record(tmp_path):
    space = load_space(SPACES_DIR / "mnist_20k.toml")
    url = str(tmp_path / "study.journal")
    # The creator has made the study but not yet recorded its space when the second worker opens it.
    created = optuna.create_study(study_name="s", storage=study_module.make_storage(url), direction="maximize")
    recording = threading.Timer(0.3, study_module._record, (created, space, 0, True))
    recording.start()
    joined = open_study("s", url, space, "median", seed=0)
    recording.join()
    assert len(joined.trials) == len(designs_to_beat(space))  # enqueued once, by the creator
    with pytest.raises(UserError, match="another search space or budget"):
        open_study("s", url, space.with_overrides(max_params=9_000), "median", seed=0)


def test_a_study_whose_creator_died_before_recording_is_recorded_by_the_next_worker(tmp_path, monkeypatch):
    monkeypatch.setattr(study_module, "UNCLAIMED_SECONDS", 0.1)
    space = load_space(SPACES_DIR / "mnist_20k.toml")
    url = str(tmp_path / "study.journal")
    optuna.create_study(study_name="s", storage=study_module.make_storage(url), direction="maximize")
    study = open_study("s", url, space, "median", seed=0)
    assert study.user_attrs["space_sha256"] == space.sha256
    assert len(study.trials) == len(designs_to_beat(space))


def test_known_designs_can_be_left_out(tmp_path):
    space = load_space(SPACES_DIR / "mnist_20k.toml")
    assert len(designs_to_beat(space)) == 5
    assert open_study("s", str(tmp_path / "j"), space, "median", seed=0, known_designs=False).trials == []


def test_a_design_over_budget_or_outside_the_space_is_not_enqueued():
    tiny = parse_space(TINY_SPACE, "tiny.toml")  # widths 4 and 8 only
    assert designs_to_beat(tiny) == []
    assert designs_to_beat(WIDE_OPEN.with_overrides(max_params=6_000)) == []  # the smallest is 6,198


def test_recipe_ranges_are_sampled_and_equal_ends_fix_a_value():
    training = parse_space(
        TINY_SPACE.replace("weight_decay = [1e-4, 5e-4]", "weight_decay = [0.0, 0.0]"), "tiny.toml"
    ).training
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    recipes = [sample_recipe(study.ask(), training) for _ in range(20)]
    assert all(r.weight_decay == 0.0 and r.batch_size == 64 for r in recipes)
    assert all(0.05 <= r.max_lr <= 0.2 and 0.0 <= r.augment_degrees <= 7.0 for r in recipes)
    assert len({r.augment_degrees for r in recipes}) == 20
