"""Known designs as data: each one is a draw of the spaces that can hold it, and a new study starts with them."""

import dataclasses
import hashlib
import re
import threading

import optuna
import pytest

from nas import study as study_module
from nas.errors import UserError
from nas.genome import Block, Genome, param_count
from nas.known import by_name, designs_to_beat, known_designs, scaled, scaled_to_budget, separable
from nas.mutation import fits
from nas.objective import genome_params, sample_genome, sample_recipe
from nas.space import SPACES_DIR, load_space, parse_space
from nas.study import design_params, open_study
from nas.trials import TrialRecord
from tests.helpers import TINY_SPACE

# The 20k space with room for every design's size and dropout (some published ones have none).
WIDE_OPEN = parse_space(
    (SPACES_DIR / "mnist_20k.toml").read_text().replace("dropout = [0.01, 0.08]", "dropout = [0.0, 0.5]"), "wide"
).with_overrides(max_params=10**6, max_macs=10**12)

# The 5k space opening with every known design (made separable), not only the three it names.
EVERY_DESIGN_AT_5K = parse_space(
    re.sub(r"known_designs = \[.*\]\n", "", (SPACES_DIR / "mnist_5k.toml").read_text()), "every_design_at_5k.toml"
)


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
    # Smaller budgets run the larger designs narrowed to fit, the smaller ones (here: separable) widened.
    assert [d.name for d in designs_to_beat(load_space(SPACES_DIR / "mnist_8k.toml"))] == [
        "woncoh1-s6 x0.90", "woncoh1-s6 separable x2.00", "era-s6-ram x0.95", "era-s6-ram separable x2.00",
        "snehanshu-raj-model-3", "snehanshu-raj-model-3 separable x2.00",
    ]  # fmt: skip
    # The 5k space opens with the designs made separable, which widens them instead.
    at_5k = designs_to_beat(EVERY_DESIGN_AT_5K)
    assert [d.name.split(" x")[1] for d in at_5k] == ["1.65", "1.80", "1.70", "2.00", "2.00", "1.10", "2.00"]
    assert (at_5k[0].name, at_5k[0].genome.describe()) == (
        "woncoh1-s6 separable x1.65", "13v-26vs-26vs | 13x1-26vs-26vs-26vs gap d0.00"
    )  # fmt: skip
    assert param_count(at_5k[0].genome) == 4_885


def test_a_space_with_a_known_recipe_opens_with_every_design_trained_by_it(tmp_path):
    space = load_space(SPACES_DIR / "mnist_8k.toml")
    assert space.known_recipe is not None
    study = open_study("s", str(tmp_path / "study.journal"), space, "median", seed=0)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == len(designs_to_beat(space))
    for trial in waiting:
        drawn = optuna.trial.FixedTrial(trial.system_attrs["fixed_params"])
        assert sample_recipe(drawn, space.training) == space.known_recipe
    # Without one, a design's parameters leave its recipe to the sampler.
    assert "max_lr" not in design_params(designs_to_beat(WIDE_OPEN)[0], WIDE_OPEN)


def test_a_space_opens_with_the_known_designs_it_names_and_refuses_a_name_it_does_not_know():
    names = [d.name for d in designs_to_beat(load_space(SPACES_DIR / "mnist_5k.toml"))]
    assert names == [
        "woncoh1-s6 separable x1.65", "era-s6-ram separable x1.80", "snehanshu-raj-model-3 separable x1.70"
    ]  # fmt: skip
    text = (SPACES_DIR / "mnist_5k.toml").read_text().replace('"era-s6-ram"', '"era-s6"')
    with pytest.raises(UserError, match="known_designs names 'era-s6', which is not a known design; name some of: wo"):
        designs_to_beat(parse_space(text, "typo.toml"))
    assert by_name("seed-004").name == "seed-004"  # --design still finds every one as published


def test_a_space_can_open_with_the_designs_both_as_published_and_separable():
    text = EVERY_DESIGN_AT_5K.text
    both = parse_space(text.replace('known_forms = ["separable"]', 'known_forms = ["published", "separable"]'), "both")
    names = [d.name for d in designs_to_beat(both)]
    assert names[:2] == ["woncoh1-s6 x0.70", "woncoh1-s6 separable x1.65"] and len(names) == 14
    # Every width from 4 to 32 is a choice there, so narrowing loses little of the budget.
    assert by_name("woncoh1-s6 x0.70", both).genome.describe() == "5v-11v-11v | 5x1-11v-11v-11v gap d0.00"
    with pytest.raises(UserError, match='convs must offer "separable"'):
        parse_space(text.replace('convs = ["full", "separable"]', 'convs = ["full"]'), "none")


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


def test_a_study_resumes_when_its_space_files_comments_change_but_not_its_settings(tmp_path):
    text = (SPACES_DIR / "mnist_20k.toml").read_text()
    url = str(tmp_path / "study.journal")
    made = open_study("s", url, parse_space(text, "made"), "median", seed=0, known_designs=False)
    reworded = parse_space("# reworded\n" + text.replace("# ", "#  ").replace(" = ", "="), "reworded")
    assert open_study("s", url, reworded, "median", seed=0, known_designs=False).user_attrs == made.user_attrs
    changed = parse_space(text.replace("[trial]\nepochs = 3", "[trial]\nepochs = 4"), "changed")
    with pytest.raises(UserError, match="another search space or budget"):
        open_study("s", url, changed, "median", seed=0, known_designs=False)


def test_a_study_that_recorded_its_space_files_text_resumes_with_that_very_file(tmp_path):
    space = load_space(SPACES_DIR / "mnist_20k.toml")
    url = str(tmp_path / "study.journal")
    open_study("s", url, space, "median", seed=0, known_designs=False)
    study = optuna.load_study(study_name="s", storage=study_module.make_storage(url))
    study.set_user_attr("space_sha256", hashlib.sha256(space.text.encode()).hexdigest())  # as studies did before
    open_study("s", url, space, "median", seed=0, known_designs=False)
    reworded = parse_space("# reworded\n" + space.text, "reworded")
    with pytest.raises(UserError, match="another search space or budget"):  # its text is all it recorded
        open_study("s", url, reworded, "median", seed=0, known_designs=False)


def test_known_designs_can_be_left_out(tmp_path):
    space = load_space(SPACES_DIR / "mnist_20k.toml")
    assert len(designs_to_beat(space)) == len(known_designs())  # every one, scaled to fit
    assert open_study("s", str(tmp_path / "j"), space, "median", seed=0, known_designs=False).trials == []


def test_a_design_is_scaled_by_the_widest_multiplier_that_fits_or_left_out():
    snehanshu = by_name("snehanshu-raj-model-3")  # 10-10-10 | 16v-16v-8v-8v-8x1-16x1, 7,928 params
    assert scaled(snehanshu.genome, 0.8, (4, 6, 8, 16)).describe() == "8-8-8 | 8v-8v-6v-6v-6x1-8x1 gap_fc d0.00"
    assert scaled(snehanshu.genome, 1.6, (4, 8, 16, 24)).describe() == "16-16-16 | 24v-24v-8v-8v-8x1-24x1 gap_fc d0.00"
    assert scaled(snehanshu.genome, 0.1, (4, 6)).describe() == "4-4-4 | 4v-4v-4v-4v-4x1-4x1 gap_fc d0.00"
    for budget in (3_000, 5_000, 7_000, 12_000, 19_000):
        space = WIDE_OPEN.with_overrides(max_params=budget)
        fitted = scaled_to_budget(snehanshu, space)
        factor = float(fitted.name.split(" x")[1])
        assert fitted.genome == scaled(snehanshu.genome, factor, space.architecture.widths)
        wider = scaled(snehanshu.genome, factor + 0.05, space.architecture.widths)
        assert fits(fitted.genome, space) and not fits(wider, space)
        assert by_name(fitted.name, space) == fitted  # what a retrain's --design finds
    assert scaled_to_budget(snehanshu, WIDE_OPEN.with_overrides(max_params=8_000)) == snehanshu  # none wider fits
    tiny = parse_space(TINY_SPACE, "tiny.toml")  # 2 blocks a stage at most: no scaling makes them drawable
    assert designs_to_beat(tiny) == []
    assert designs_to_beat(WIDE_OPEN.with_overrides(max_params=600)) == []  # too small at any width
    with pytest.raises(UserError, match="no known design 'snehanshu-raj-model-3 x0.50'.*pass one of: woncoh1-s6"):
        by_name("snehanshu-raj-model-3 x0.50", WIDE_OPEN)


def test_recipe_ranges_and_choices_are_sampled_and_equal_ends_fix_a_value():
    training = parse_space(
        TINY_SPACE.replace("weight_decay = [1e-4, 5e-4]", "weight_decay = [0.0, 0.0]"), "tiny.toml"
    ).training
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    recipes = [sample_recipe(study.ask(), training) for _ in range(20)]
    assert all(r.weight_decay == 0.0 and r.batch_size == 64 for r in recipes)
    assert all(0.05 <= r.max_lr <= 0.2 and 0.0 <= r.augment_degrees <= 7.0 for r in recipes)
    assert len({r.augment_degrees for r in recipes}) == 20
    assert all(r.augment_shift == 2.0 for r in recipes)  # a space without the shift keeps the 2 px all searches used
    training = parse_space(TINY_SPACE.replace("[trial]", "augment_shift = [0.0, 3.0]\n[trial]"), "tiny.toml").training
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    shifts = [sample_recipe(study.ask(), training).augment_shift for _ in range(20)]
    assert all(0.0 <= s <= 3.0 for s in shifts) and len(set(shifts)) == 20
    training = parse_space(TINY_SPACE.replace("batch_size = 64", "batch_size = [32, 128]"), "tiny.toml").training
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert {sample_recipe(study.ask(), training).batch_size for _ in range(20)} == {32, 128}


@pytest.mark.parametrize("design", designs_to_beat(EVERY_DESIGN_AT_5K), ids=lambda d: d.name)
def test_a_separable_design_enqueued_as_parameters_is_drawn_as_exactly_that_genome(design):
    arch = dataclasses.replace(EVERY_DESIGN_AT_5K.architecture, dropout=(0.0, 0.5))
    assert sample_genome(optuna.trial.FixedTrial(genome_params(design.genome)), arch) == design.genome


def test_the_separable_form_keeps_only_the_first_conv_full_even_where_blocks_repeat():
    repeated = Block(8)
    genome = Genome(stages=((repeated, repeated, Block(8, kernel=1)), (repeated,)), dropout=0.0, head="gap")
    assert separable(genome).describe() == "8-8s-8x1 | 8s gap d0.00"
