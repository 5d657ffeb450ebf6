"""Spec tests for a model exported by `python -m nas.retrain`, copied beside it as test_model.py.

They need only torch and pytest, and read only the artefacts in their own folder: the frozen
program (model.pt2), its weights, and metrics.json, which states the spec it was trained for. No
figure is written in here. The test images come from the directory named by the environment
variable NAS_TEST_DATA (the MNIST-format t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte files,
raw or gzipped), else from the directory metrics.json says the model was tested on, if this
machine has it. Run with `NAS_TEST_DATA=DIR pytest <result folder>/test_model.py`.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
TEST_DATA = "NAS_TEST_DATA"
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


def read_idx(directory: Path, stem: str) -> torch.Tensor:
    """One MNIST-format IDX file (raw or gzipped) as a uint8 tensor."""
    path = next((directory / name for name in (stem, stem + ".gz") if (directory / name).is_file()), None)
    if path is None:
        pytest.fail(f"no {stem}[.gz] in {directory}; set {TEST_DATA} to the directory of the test images")
    data = path.read_bytes()
    data = gzip.decompress(data) if path.suffix == ".gz" else data
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def load_test_set(metrics: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Test images as float pixels in [0, 1], N x C x H x W, and their labels."""
    given = os.environ.get(TEST_DATA) or metrics["data"]["dir"]
    if not given or not Path(given).is_dir():
        pytest.fail(f"no test images: set {TEST_DATA} to the directory of the MNIST-format t10k files")
    images = read_idx(Path(given), "t10k-images-idx3-ubyte")
    labels = read_idx(Path(given), "t10k-labels-idx1-ubyte").long()
    return images.reshape(len(images), *metrics["input"]["shape"][1:]).float() / 255, labels


def test_input_shape_gives_one_score_per_class(program, metrics):
    shape = metrics["input"]["shape"][1:]
    for batch in (1, 7):
        out = program.module()(torch.rand(batch, *shape))
        assert out.shape == (batch, metrics["classes"])
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
    pixels, labels = load_test_set(metrics)
    model = program.module()
    with torch.inference_mode():
        predictions = torch.cat([model(pixels[i : i + 500]).argmax(1) for i in range(0, len(pixels), 500)])
    accuracy = 100.0 * (predictions == labels).sum().item() / len(labels)
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=0.02)  # the reported figure is this model's
    assert accuracy >= metrics["spec"]["min_test_accuracy"]
