import json

import pytest
import torch

from nas.errors import UserError
from nas.genome import Genome, Stage, param_count
from nas.model import build_model, count_macs
from tests.helpers import random_genomes


@pytest.mark.parametrize("space_file", ["mnist_20k.toml", "mnist_8k.toml"])
def test_param_count_equals_built_model_over_random_genomes(space_file):
    for genome in random_genomes(space_file, 150):
        model = build_model(genome)
        assert param_count(genome) == sum(p.numel() for p in model.parameters()), genome.describe()


@pytest.mark.parametrize("genome", random_genomes("mnist_20k.toml", 30, seed=1), ids=lambda g: g.describe())
def test_genome_json_round_trip(genome):
    assert Genome.from_dict(json.loads(json.dumps(genome.to_dict()))) == genome


@pytest.mark.parametrize("genome", random_genomes("mnist_20k.toml", 6, seed=2), ids=lambda g: g.describe())
def test_model_output_shape_and_every_parameter_learns(genome):
    model = build_model(genome)
    logits = model(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_seed_004_like_genome_counts():
    # Hand-checked: conv 1->8 (72+16), 8->16 (1152+32), 1x1 16->8 (128+16), 8->16 (1152+32), GAP head 16->10 (170).
    genome = Genome(stages=(Stage((8, 16)), Stage((16,), transition=8)), dropout=0.1, head="gap")
    assert param_count(genome) == 88 + 1184 + 144 + 1184 + 170
    fc = Genome(stages=genome.stages, dropout=0.1, head="fc")
    assert param_count(fc) == 88 + 1184 + 144 + 1184 + 16 * 14 * 14 * 10 + 10


def test_macs_grow_with_width():
    narrow = Genome(stages=(Stage((8,)), Stage((8,))), dropout=0.0, head="gap")
    wide = Genome(stages=(Stage((16,)), Stage((16,))), dropout=0.0, head="gap")
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
        ({"stages": [{"widths": [8], "transition": 4}], "dropout": 0.1, "head": "gap"}, "first stage"),
        ({"stages": [{"widths": [8]}], "dropout": 1.5, "head": "gap"}, "dropout"),
        ({"stages": [{"widths": [8]}] * 6, "dropout": 0.1, "head": "gap"}, "pool"),
        ({"stages": [{"width": [8]}], "dropout": 0.1, "head": "gap"}, "widths"),
    ],
)
def test_invalid_genome_documents_name_the_problem(document, problem):
    with pytest.raises(UserError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        Genome.from_dict(document)
