import random

import optuna
import pytest

from nas.genome import param_count
from nas.known import known_designs
from nas.model import count_macs
from nas.mutation import fits, mutate, nudge_recipe
from nas.objective import Objective, genome_params, recipe_params, sample_genome, sample_recipe
from nas.search import TrialSlots, run_trials
from nas.space import SPACES_DIR, load_space
from nas.study import PARENTS, queue_mutant
from nas.train import Recipe
from nas.trials import TrialRecord
from tests.helpers import random_genomes
from tests.test_search import NO_MACS_CAP, SpyTrainer

RECIPE = Recipe(max_lr=0.1, batch_size=128, weight_decay=3e-5, augment_degrees=8.0)


def unpruned_study() -> optuna.Study:
    return optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner()
    )


def accuracy_by_size(model) -> float:
    """Made-up and deterministic: larger candidates score higher, none the same as another size."""
    return 90 + sum(p.numel() for p in model.parameters()) / 10_000


@pytest.mark.parametrize(
    "space_file, kinds",
    [
        ("mnist_8k.toml", {"width", "padding", "kernel", "conv", "insert", "remove", "head", "recipe"}),
        ("mnist_5k.toml", {"width", "padding", "kernel", "conv", "insert", "remove", "head", "recipe"}),
    ],
)
def test_every_mutant_is_in_the_space_within_budget_and_is_what_its_params_draw(space_file, kinds):
    space = load_space(SPACES_DIR / space_file)
    parents = [g for g in random_genomes(space_file, 200, seed=3) if fits(g, space)][:50]  # as trials that ran
    assert len(parents) >= 20
    rng, changes = random.Random(0), set()
    for parent in parents:
        mutant = mutate(parent, RECIPE, space, rng)
        if mutant is None:  # every neighbour of this parent is over a budget
            continue
        assert space.architecture.can_draw(mutant.genome)
        assert param_count(mutant.genome) <= space.max_params and count_macs(mutant.genome) <= space.max_macs
        assert (mutant.genome, mutant.recipe) != (parent, RECIPE)
        changes.add(mutant.change.split()[0])
        # Enqueued as these parameters, the trial draws exactly the mutant: what is trained is what was meant.
        drawn = optuna.trial.FixedTrial({**genome_params(mutant.genome), **recipe_params(mutant.recipe)})
        assert sample_genome(drawn, space.architecture) == mutant.genome
        assert sample_recipe(drawn, space.training) == mutant.recipe
    assert changes == kinds


def test_a_recipe_nudge_stays_in_the_space_and_is_what_its_params_draw():
    space = load_space(SPACES_DIR / "mnist_5k.toml")  # the shift is searched there, 0-3 px
    genome = next(d.genome for d in known_designs() if d.name == "woolly-3762")
    recipe = Recipe(max_lr=0.1, batch_size=32, weight_decay=3e-5, augment_degrees=8.0, augment_shift=2.8)
    shifts = set()
    for seed in range(20):
        _, nudged, change = nudge_recipe(genome, recipe, space, random.Random(seed))
        assert 0.0 <= nudged.augment_shift <= 3.0 and "shift 2.8->" in change
        assert nudged.augment_scale == 0.0 and "scale 0.00->0.00" in change  # not searched there
        assert nudged.batch_size == 32  # one of the space's choices, kept
        assert sample_recipe(optuna.trial.FixedTrial(recipe_params(nudged)), space.training) == nudged
        shifts.add(nudged.augment_shift)
    assert 3.0 in shifts and len(shifts) > 10  # clipped at the space's end, else anywhere within half a pixel


def test_a_known_design_mutates_by_one_described_change():
    space = load_space(SPACES_DIR / "mnist_20k.toml")
    woncoh = next(d.genome for d in known_designs() if d.name == "woncoh1-s6")
    for seed in range(20):
        mutant = mutate(woncoh, RECIPE, space, random.Random(seed))
        blocks = [b for stage in mutant.genome.stages for b in stage]
        before = [b for stage in woncoh.stages for b in stage]
        kind = mutant.change.split()[0]
        if kind == "recipe":
            assert mutant.genome.stages == woncoh.stages and mutant.recipe != RECIPE
        elif kind in ("insert", "remove"):
            assert abs(len(blocks) - len(before)) == 1 and mutant.recipe == RECIPE
        elif kind == "head":
            assert mutant.genome.stages == woncoh.stages and mutant.genome.head != woncoh.head
        else:
            assert kind in ("width", "padding", "kernel")
            assert sum(a != b for a, b in zip(blocks, before, strict=True)) == 1 and mutant.recipe == RECIPE


def test_a_study_queues_mutants_of_its_best_trials_once_enough_have_completed(tiny_data, tiny_space):
    space = load_space(tiny_space, max_macs=NO_MACS_CAP)
    study = unpruned_study()
    objective = Objective(space, tiny_data, seed=0, train_fn=SpyTrainer(accuracy_by_size))
    rng = random.Random(0)
    assert not queue_mutant(study, space, rng)  # nothing to mutate yet
    run_trials(study, objective, TrialSlots(PARENTS + 3).claim)
    assert queue_mutant(study, space, rng)
    assert not queue_mutant(study, space, rng)  # one waits already: no queue builds up
    run_trials(study, objective, TrialSlots(1).claim)  # runs the waiting mutant
    mutant = TrialRecord.of(study.trials[-1])
    parent_number = int(mutant.mutation.split()[2].rstrip(":"))
    best = sorted((TrialRecord.of(t) for t in study.trials[:-1] if t.value is not None), key=lambda t: -t.accuracy)
    assert parent_number in [t.number for t in best[:PARENTS]]
    assert mutant.outcome == "complete"


def test_half_the_trials_of_a_run_are_mutants(tiny_data, tiny_space):
    space = load_space(tiny_space, max_macs=NO_MACS_CAP)
    study = unpruned_study()
    objective = Objective(space, tiny_data, seed=0, train_fn=SpyTrainer(accuracy_by_size))
    rng = random.Random(0)
    run_trials(study, objective, TrialSlots(40).claim, lambda: rng.random() < 0.5 and queue_mutant(study, space, rng))
    mutants = sum(TrialRecord.of(t).mutation is not None for t in study.trials)
    assert len(study.trials) == 40 and 10 <= mutants <= 25
