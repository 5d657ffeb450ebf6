import re

import pytest

from nas.errors import UserError
from nas.genome import Block, Genome, param_count
from nas.known import by_name, designs_to_beat
from nas.space import DEFAULT_SPACE, MAX_EPOCHS, SPACES_DIR, RetrainPlan, load_space, parse_space
from nas.train import Recipe
from tests.helpers import random_genomes

DEFAULT_TEXT = DEFAULT_SPACE.read_text()


def edited(old: str, new: str) -> str:
    """The default space file with one line changed."""
    assert old in DEFAULT_TEXT
    return DEFAULT_TEXT.replace(old, new, 1)


# A recipe the default space can draw (its batch size is fixed at 128, its shift at 2 px).
KNOWN_RECIPE = "[known_recipe]\nmax_lr = 0.1\nbatch_size = 128\nweight_decay = 3e-5\naugment_degrees = 8.0\n"


def with_known_recipe(old: str = "", new: str = "") -> str:
    """The default space file with KNOWN_RECIPE added, one line of it changed."""
    assert old in KNOWN_RECIPE
    return DEFAULT_TEXT + "\n" + KNOWN_RECIPE.replace(old, new, 1)


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_spaces_load_and_their_smallest_genome_fits(path):
    space = load_space(path)
    assert param_count(space.smallest_genome()) <= space.max_params


@pytest.mark.parametrize(
    "text, key, problem",
    [
        ("stages = [2, 3", None, "not valid TOML"),
        (edited("heads =", "colour = 1\nheads ="), "architecture", "unknown key 'colour'"),
        (edited("[trial]", "[trials]"), None, r"unknown table \[trials\]"),
        (edited("epochs = 3 ", "# epochs removed "), "trial", "missing key 'epochs'"),
        (edited("batch_size = 128", 'batch_size = "128"'), "training.batch_size", "list of ints, or one int"),
        (edited("batch_size = 128", "batch_size = 12.8"), "training.batch_size", "list of ints, or one int"),
        (edited("batch_size = 128", "batch_size = [64, 12.8]"), "training.batch_size", "list of ints"),
        (edited("batch_size = 128", "batch_size = [64, 0]"), "training.batch_size", "at least 1"),
        (edited("widths = [4, 6, 8, 10, 12, 16, 20, 24, 32]", "widths = []"), "architecture.widths", "empty list"),
        (edited('heads = ["gap", "gap_fc", "fc"]', "heads = [1, 2]"), "architecture.heads", "list of strs"),
        (edited("blocks_per_stage = [1, 6]", "blocks_per_stage = [3, 1]"), "blocks_per_stage", "min 3 is greater"),
        (edited("dropout = [0.01, 0.08]", "dropout = [0.3, 0.1]"), "dropout", "min 0.3 is greater"),
        (edited("max_lr = [0.05, 0.25]", "max_lr = [0.05]"), "max_lr", r"\[min, max\] finite numbers"),
        (edited('heads = ["gap", "gap_fc", "fc"]', 'heads = ["gap", "mlp"]'), "architecture.heads", "must be among"),
        (edited("stages = [2, 3]", "stages = [2, 7]"), "architecture.stages", "must lie in"),
        (edited("max_params = 20_000", "max_params = true"), "budget.max_params", "must be an integer"),
        (edited("max_params = 20_000", "max_params = 20_000\nmin_params = 1"), None, "optionally max_macs"),
        (edited("max_macs = 2_500_000", "max_macs = 1.5e6"), "budget.max_macs", "an integer"),
        (edited("max_macs = 2_500_000", "max_macs = 0"), "budget.max_macs", "positive"),
        (edited("search_seconds = 720", "search_seconds = -1"), "budget.search_seconds", "positive"),
        (edited("search_seconds = 720", 'search_seconds = "13 min"'), "budget.search_seconds", "finite number"),
        (edited("kernels = [3, 1]", "kernels = [3, 5]"), "architecture.kernels", "must be among 3, 1"),
        (edited('padding = ["same", "valid"]', 'padding = ["full"]'), "architecture.padding", "must be among same"),
        (edited("weight_decay = [1e-5, 1e-4]", "weight_decay = 1e-4"), "training.weight_decay", r"\[min, max\]"),
        (edited("weight_decay = [1e-5, 1e-4]", "weight_decay = [-1.0, 0.0]"), "weight_decay", "not be negative"),
        (edited("augment_degrees = [4.0, 12.0]", "augment_degrees = [-5.0, 5.0]"), "augment_degrees", "negative"),
        (edited("augment_degrees =", "augment_shift = [-1.0, 2.0]\naugment_degrees ="), "augment_shift", "negative"),
        (edited("augment_degrees =", "augment_scale = [0.0, 1.0]\naugment_degrees ="), "augment_scale", r"\[0, 1\)"),
        (edited("epochs = 19 ", "epochs = 0 "), "retrain.epochs", "at least 1"),
        (edited("# max_seconds = 300", "max_seconds = 0"), "retrain.max_seconds", "positive"),
        (edited("# max_seconds = 300", 'max_seconds = "5 min"'), "retrain.max_seconds", "finite number"),
        (edited("# max_seconds = 300", "minutes = 5"), "retrain", "unknown key 'minutes'"),
        (with_known_recipe("max_lr = 0.1\n"), "known_recipe", "missing key 'max_lr'"),
        (with_known_recipe("max_lr = 0.1", "max_lr = 0.5"), "known_recipe.max_lr", r"outside training.max_lr \["),
        (with_known_recipe("batch_size = 128", "batch_size = 32"), "known_recipe.batch_size", "not among .* add it"),
        (with_known_recipe("\n", "\naugment_shift = 3.0\n"), "known_recipe.augment_shift", "outside"),
        (with_known_recipe("\n", "\naugment_scale = 0.1\n"), "known_recipe.augment_scale", "outside"),
        (with_known_recipe("\n", "\nmomentum = 0.9\n"), "known_recipe", "unknown key 'momentum'"),
    ],
)
def test_each_validation_error_names_file_and_key(text, key, problem):
    with pytest.raises(UserError) as caught:
        parse_space(text, "spaces/broken.toml")
    message = str(caught.value)
    assert message.startswith("spaces/broken.toml")
    assert key is None or key in message
    assert re.search(problem, message)
    assert "\n" not in message


def test_a_macs_budget_comes_from_the_file_or_the_command_line(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(edited("max_macs = 2_500_000", "max_macs = 2_000_000"))
    assert load_space(path).max_macs == 2_000_000
    assert load_space(path, max_macs=1_000_000).max_macs == 1_000_000
    without = tmp_path / "without.toml"
    without.write_text(DEFAULT_TEXT.replace("max_macs = 2_500_000", "# no MACs budget"))
    assert load_space(without).max_macs is None


def test_a_retrain_plan_comes_from_the_file_or_the_command_line_and_may_be_left_out(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(edited("# max_seconds = 300", "max_seconds = 300"))
    assert (load_space(path).retrain.epochs, load_space(path).retrain.max_seconds) == (19, 300.0)
    assert load_space(path, max_retrain_seconds=120).retrain.max_seconds == 120
    without = tmp_path / "without.toml"
    without.write_text(DEFAULT_TEXT[: DEFAULT_TEXT.index("[retrain]")])
    assert load_space(without).retrain == RetrainPlan(epochs=MAX_EPOCHS, max_seconds=None)


def test_a_known_recipe_comes_from_the_file_or_is_left_to_the_sampler():
    assert parse_space(DEFAULT_TEXT, "default.toml").known_recipe is None
    recipe = parse_space(with_known_recipe(), "known.toml").known_recipe
    assert recipe == Recipe(max_lr=0.1, batch_size=128, weight_decay=3e-5, augment_degrees=8.0, augment_shift=2.0)


def test_valid_convs_that_shrink_the_map_away_leave_a_smaller_padded_genome():
    # Three stages of two valid 3x3 convs cannot be built (28 -> 24, 12 -> 8, 4 -> 0); the smallest is still found.
    text = (SPACES_DIR / "mnist_5k.toml").read_text()
    space = parse_space(text.replace("blocks_per_stage = [1, 6]", "blocks_per_stage = [2, 6]"), "5k, 2 blocks at least")
    assert space.smallest_genome().describe() == "4x1-4x1 | 4x1-4x1 gap d0.01"


def test_space_can_draw_the_designs_that_fit_it():
    space = load_space(SPACES_DIR / "mnist_20k.toml")
    assert space.architecture.can_draw(by_name("snehanshu-raj-model-3").genome)
    assert not space.architecture.can_draw(Genome(stages=((Block(7),),) * 2, dropout=0.0, head="gap"))  # width 7
    assert space.architecture.can_draw(by_name("seed-001").genome)
    # ...but its 5.1M MACs are over this space's budget, so a study starts with it narrowed.
    # The others widen as far as both budgets allow; woncoh1-s6 and snehanshu-raj-model-3 cannot.
    assert [d.name for d in designs_to_beat(space)] == [
        "woncoh1-s6", "era-s6-ram x1.95", "snehanshu-raj-model-3", "shwethaamrutha-s6 x1.65", "seed-004 x1.55",
        "seed-001 x0.70", "woolly-3762 x2.00",
    ]  # fmt: skip


def test_budget_below_smallest_architecture_is_refused_before_any_trial(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(DEFAULT_TEXT)
    smallest = param_count(load_space(path).smallest_genome())
    assert load_space(path, max_params=smallest).max_params == smallest
    with pytest.raises(UserError, match=f"{smallest:,} parameters, over the budget of {smallest - 1:,}"):
        load_space(path, max_params=smallest - 1)


def test_smallest_genome_is_the_minimum_over_the_space():
    # Brute force over a small space: no sampled genome may have fewer parameters.
    space = load_space(SPACES_DIR / "mnist_8k.toml")
    smallest = param_count(space.smallest_genome())
    assert all(param_count(g) >= smallest for g in random_genomes("mnist_8k.toml", 300))


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read the search space"):
        load_space(tmp_path / "nope.toml")
