import json

import pytest
import torch

from nas.errors import UserError
from nas.genome import Block, Genome, map_sizes, param_count
from nas.known import by_name, known_designs
from nas.model import build_model, count_macs
from tests.helpers import random_genomes


@pytest.mark.parametrize("space_file", ["mnist_20k.toml", "mnist_8k.toml", "mnist_5k.toml"])
def test_param_count_equals_built_model_over_random_genomes(space_file):
    for genome in random_genomes(space_file, 150):
        model = build_model(genome)
        assert param_count(genome) == sum(p.numel() for p in model.parameters()), genome.describe()


@pytest.mark.parametrize(
    "genome",
    random_genomes("mnist_20k.toml", 30, seed=1) + random_genomes("mnist_5k.toml", 30, seed=1),  # 5k: separable too
    ids=lambda g: g.describe(),
)
def test_genome_json_round_trip(genome):
    assert Genome.from_dict(json.loads(json.dumps(genome.to_dict()))) == genome


@pytest.mark.parametrize(
    "genome",
    random_genomes("mnist_20k.toml", 6, seed=2) + random_genomes("mnist_5k.toml", 6, seed=2),
    ids=lambda g: g.describe(),
)
def test_model_output_shape_and_every_parameter_learns(genome):
    model = build_model(genome)
    logits = model(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_hand_checked_counts_with_valid_convs_and_an_fc_head():
    # conv 1->8 (72+16), valid 8->16 (1152+32), pool, 1x1 16->8 (128+16), valid 8->16 (1152+32), GAP head 16->10 (170).
    genome = Genome(
        stages=((Block(8), Block(16, padded=False)), (Block(8, kernel=1), Block(16, padded=False))),
        dropout=0.1,
        head="gap",
    )
    assert param_count(genome) == 88 + 1184 + 144 + 1184 + 170
    assert map_sizes(genome) == [28, 26, 13, 11]
    fc = Genome(stages=genome.stages, dropout=0.1, head="fc")
    assert param_count(fc) == 88 + 1184 + 144 + 1184 + 16 * 11 * 11 * 10 + 10


def test_hand_checked_counts_of_a_separable_block():
    # conv 1->8 (72+16); separable valid 8->16: depthwise 8x3x3 (72) and its BatchNorm (16), pointwise 8->16 (128+32).
    genome = Genome(stages=((Block(8), Block(16, padded=False, separable=True)),), dropout=0.1, head="gap")
    assert param_count(genome) == 88 + 88 + 160 + 170
    assert map_sizes(genome) == [28, 26]
    assert genome.describe() == "8-16vs gap d0.10"
    assert "separable" not in genome.to_dict()["stages"][0][0]  # plain blocks' records read as before
    depthwise = build_model(genome)[3]
    assert depthwise.groups == 8 and depthwise.weight.shape == (8, 1, 3, 3)


def test_known_designs_count_as_published_up_to_the_explained_difference():
    # known_designs.json explains each difference; these are the figures its notes state.
    explained = {
        "woncoh1-s6": 10,
        "era-s6-ram": 10,
        "snehanshu-raj-model-3": 10,
        "shwethaamrutha-s6": -62,
        "seed-004": -1676,
        "seed-001": -136,
        "woolly-3762": -60,
    }
    designs = known_designs()
    assert {d.name for d in designs} == set(explained)
    for design in designs:
        assert param_count(design.genome) - design.published_params == explained[design.name], design.name
        assert sum(p.numel() for p in build_model(design.genome).parameters()) == param_count(design.genome)


def test_the_7918_parameter_design_shrinks_as_published():
    genome = by_name("snehanshu-raj-model-3").genome
    assert map_sizes(genome) == [28, 28, 28, 12, 10, 8, 6, 6, 6]


def test_old_best_json_genomes_load_as_the_same_network():
    old = {"stages": [{"widths": [20]}, {"widths": [12, 24], "transition": 8}], "dropout": 0.07, "head": "fc"}
    genome = Genome.from_dict(old)
    assert genome.stages == ((Block(20),), (Block(8, kernel=1), Block(12), Block(24)))
    assert param_count(genome) == (180 + 40) + (160 + 16) + (864 + 24) + (2592 + 48) + 24 * 14 * 14 * 10 + 10


def test_macs_grow_with_width():
    narrow = Genome(stages=((Block(8),), (Block(8),)), dropout=0.0, head="gap")
    wide = Genome(stages=((Block(16),), (Block(16),)), dropout=0.0, head="gap")
    # The first conv alone: 28*28 positions * 9 taps * 8 channels.
    assert count_macs(narrow) > 28 * 28 * 9 * 8
    assert count_macs(wide) > count_macs(narrow)


@pytest.mark.parametrize(
    "document, problem",
    [
        ([], "JSON object"),
        ({"stages": [], "dropout": 0.1, "head": "gap"}, "at least one stage"),
        ({"stages": [{"widths": [8]}], "dropout": 0.1}, "missing ['head']"),
        ({"stages": [{"widths": [8]}], "dropout": 0.1, "head": "mlp"}, "unknown head"),
        ({"stages": [{"widths": [-8]}], "dropout": 0.1, "head": "gap"}, "positive"),
        ({"stages": [{"widths": [8.5]}], "dropout": 0.1, "head": "gap"}, "integers"),
        ({"stages": [[{"width": 8, "kernel": 5}]], "dropout": 0.1, "head": "gap"}, "kernels must be"),
        ({"stages": [[{"width": 8, "padded": "no"}]], "dropout": 0.1, "head": "gap"}, "padded and separable true"),
        ({"stages": [[{"width": 8, "separable": 1}]], "dropout": 0.1, "head": "gap"}, "padded and separable true"),
        ({"stages": [[{"width": 8, "kernel": 1, "separable": True}]], "dropout": 0.1, "head": "gap"}, "only a 3x3"),
        ({"stages": [[{"width": 8, "padded": False}] * 14], "dropout": 0.1, "head": "gap"}, "shrink"),
        ({"stages": [{"widths": [8]}], "dropout": 1.5, "head": "gap"}, "dropout"),
        ({"stages": [{"widths": [8]}] * 6, "dropout": 0.1, "head": "gap"}, "pool"),
        ({"stages": [{"width": [8]}], "dropout": 0.1, "head": "gap"}, "widths"),
        ({"stages": [[{"widths": 8}]], "dropout": 0.1, "head": "gap"}, "block must be an object with width"),
    ],
)
def test_invalid_genome_documents_name_the_problem(document, problem):
    with pytest.raises(UserError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Genome.from_dict(document)
