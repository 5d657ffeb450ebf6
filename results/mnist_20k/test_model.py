"""Spec tests for a model exported by `python -m nas.retrain`, copied beside it as test_model.py.

They read only the artefacts in their own folder: the frozen program (model.pt2), its weights,
and metrics.json, which states the spec it was trained for. No figure is written in here.
Run with `pytest <result folder>/test_model.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.data import load_test_split, to_pixels

HERE = Path(__file__).resolve().parent
PASS_THROUGH = ("view", "reshape", "flatten", "squeeze", "_unsafe_view", "clone")
GAP_OPS = ("mean", "adaptive_avg_pool2d", "avg_pool2d")
FC_OPS = ("linear", "addmm")


@pytest.fixture(scope="module")
def metrics() -> dict:
    return json.loads((HERE / "metrics.json").read_text())


@pytest.fixture(scope="module")
def program() -> torch.export.ExportedProgram:
    return torch.export.load(str(HERE / "model.pt2"))


def op_name(node: torch.fx.Node) -> str:
    """`aten.linear.default` -> `linear`."""
    return str(node.target).split(".")[-2] if node.op == "call_function" else node.op


def test_1x28x28_input_gives_10_outputs(program):
    for batch in (1, 7):
        out = program.module()(torch.rand(batch, 1, 28, 28))
        assert out.shape == (batch, 10)
        assert torch.isfinite(out).all()


def test_parameter_count_within_budget(program, metrics):
    count = sum(program.state_dict[name].numel() for name in program.graph_signature.parameters)
    weights = torch.load(HERE / "weights.pt", weights_only=True)
    assert count == metrics["params"]
    assert weights.keys() >= set(program.graph_signature.parameters)
    assert count <= metrics["spec"]["max_params"]


def test_uses_batchnorm(program):
    assert any("batch_norm" in op_name(node) for node in program.graph.nodes)


def test_uses_dropout(metrics):
    # An eval-mode export drops Dropout from the graph, so the trained network's layer record shows it.
    assert "Dropout" in metrics["layers"]
    assert metrics["genome"]["dropout"] > 0


def test_head_is_gap_or_fully_connected(program):
    (result,) = next(node for node in program.graph.nodes if node.op == "output").args[0]
    while op_name(result) in PASS_THROUGH:
        result = result.args[0]
    assert op_name(result) in GAP_OPS + FC_OPS


def test_trained_fewer_than_20_epochs(metrics):
    epochs_run = {round(report["epoch"]) for report in metrics["history"]}
    assert len(epochs_run) == metrics["epochs"] <= metrics["spec"]["max_epochs"] < 20


def test_test_accuracy_meets_floor(program, metrics):
    split = load_test_split(metrics["data"]["dir"])
    model = program.module()
    with torch.inference_mode():
        batches = [to_pixels(split.images[i : i + 500]) for i in range(0, len(split), 500)]
        predictions = torch.cat([model(batch).argmax(1) for batch in batches])
    accuracy = 100.0 * (predictions == split.labels).sum().item() / len(split)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=0.02)  # the reported figure is this model's
    assert accuracy >= metrics["spec"]["min_test_accuracy"]
