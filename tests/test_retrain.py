import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas import machine
from nas.best import parse as parse_best
from nas.best import space_record
from nas.data import BUNDLED_MNIST
from nas.errors import UserError
from nas.genome import Genome, param_count
from nas.known import designs_to_beat
from nas.model import build_model, with_normalisation
from nas.retrain import SPEC_TESTS, RetrainOptions, main, retrain
from nas.space import SPACES_DIR, load_space, parse_space
from tests.helpers import TINY_GENOME, best_json

RESULT_FILES = {"model.pt2", "weights.pt", "metrics.json", "train.log", "test_model.py"}


def run_retrain(tmp_path, tiny_dir, name, genome=TINY_GENOME, epochs=1, min_accuracy=0.0) -> dict:
    out = tmp_path / name
    options = RetrainOptions(
        best=best_json(tmp_path, tiny_dir, genome),
        epochs=epochs,
        out=out,
        seed=0,
        data_dir=None,
        max_params=None,
        min_accuracy=min_accuracy,
    )
    return retrain(options)


def spec_failures(folder: Path, env: dict | None = None) -> set[str]:
    """Run the generated test file in a fresh interpreter; the names of the tests that failed."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "test_model.py")],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
    )
    failed = set(re.findall(r"FAILED \S+::(\w+)", result.stdout))
    assert (result.returncode == 0) == (not failed), result.stdout[-2000:]
    return failed


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_dir) -> Path:
    tmp_path = tmp_path_factory.mktemp("good")
    run_retrain(tmp_path, tiny_dir, "good")
    return tmp_path / "good"


def test_retrain_writes_the_five_files_and_the_frozen_model_matches_the_eager_one(good):
    assert RESULT_FILES <= {p.name for p in good.iterdir()}
    metrics = json.loads((good / "metrics.json").read_text())
    assert metrics["params"] == param_count(TINY_GENOME) and len(metrics["history"]) == 1
    assert "test:" in (good / "train.log").read_text()

    state = torch.load(good / "weights.pt", weights_only=True)
    eager = with_normalisation(build_model(TINY_GENOME), 0.0, 1.0)
    eager.load_state_dict(state)
    frozen = torch.export.load(str(good / "model.pt2")).module()
    pixels = torch.rand(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(frozen(pixels), eager.eval()(pixels), atol=1e-5)
    assert metrics["input"]["normalisation"]["mean"] == pytest.approx(state["0.mean"].item())


BAD_MODELS = {  # variant of the good model: the one generated spec test it must fail
    "over_budget": "test_parameter_count_within_budget",
    "no_dropout": "test_uses_dropout",
    "below_floor": "test_test_accuracy_meets_floor",
    "twenty_epochs": "test_trained_fewer_than_20_epochs",
}


@pytest.fixture(scope="module")
def spec_outcomes(tmp_path_factory, tiny_dir, good) -> dict[str, set[str]]:
    """The generated spec tests' failures for the good model and each bad one, all run by one fresh interpreter."""
    tmp_path = tmp_path_factory.mktemp("bad")
    over = tmp_path / "over_budget"  # the same model held to a budget one parameter smaller
    shutil.copytree(good, over)
    metrics = json.loads((over / "metrics.json").read_text())
    metrics["spec"]["max_params"] = metrics["params"] - 1
    (over / "metrics.json").write_text(json.dumps(metrics))
    run_retrain(tmp_path, tiny_dir, "no_dropout", genome=Genome(TINY_GENOME.stages, dropout=0.0, head="gap"))
    run_retrain(tmp_path, tiny_dir, "below_floor", min_accuracy=99.9)
    run_retrain(tmp_path, tiny_dir, "twenty_epochs", epochs=20)
    folders = [good, *(tmp_path / variant for variant in BAD_MODELS)]
    # One interpreter for all five (a fresh one pays seconds to load its first frozen model);
    # importlib mode keeps the five files named test_model.py apart.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
         *(str(folder / "test_model.py") for folder in folders)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    outcomes: dict[str, set[str]] = {folder.name: set() for folder in folders}
    for folder, test in re.findall(r"FAILED \S*?(\w+)/test_model\.py::(\w+)", result.stdout):
        outcomes[folder].add(test)
    assert "error" not in result.stdout.splitlines()[-1], result.stdout[-2000:]  # every file collected and ran
    return outcomes


def test_generated_spec_tests_pass_on_a_good_model(spec_outcomes):
    assert spec_outcomes["good"] == set()


@pytest.mark.parametrize("variant", BAD_MODELS)
def test_generated_spec_tests_fail_on_bad_models(variant, spec_outcomes):
    assert spec_outcomes[variant] == {BAD_MODELS[variant]}


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: {k: v for k, v in d.items() if k != "train"}, "missing field 'train.max_lr'"),
        (lambda d: {**d, "genome": {**d["genome"], "head": "mlp"}}, "unknown head 'mlp'"),
        (lambda d: {**d, "genome": {**d["genome"], "stages": [{"widths": [-4]}]}}, "positive"),
        (lambda d: {**d, "max_params": 100}, "over its budget of 100"),
        (lambda d: {**d, "max_params": "20k"}, "field 'max_params' has the wrong type"),
        (lambda d: {**d, "data": {**d["data"], "dir": 5}}, "field 'data.dir' has the wrong type"),
        (lambda d: {**d, "train": {**d["train"], "augment_scale": 1.5}}, "augment_scale in [0, 1)"),
    ],
)
def test_bad_best_json_is_one_line_and_exit_2(edit, problem, tmp_path, tiny_dir, capsys):
    path = best_json(tmp_path, tiny_dir)
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError):
        parse_best(path.read_text(), "best.json")


def test_bad_options_and_unwritable_output_exit_2(tmp_path, tiny_dir, capsys):
    path = best_json(tmp_path, tiny_dir)
    assert main([str(path), "--epochs", "0"]) == 2
    assert main([str(path), "--processes", "0"]) == 2
    assert main([str(path), "--augment-scale", "-0.1"]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([str(path), "--out", str(blocker / "sub")]) == 2
    assert "choose a writable --out" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(400)  # one epoch on all 60,000 images, then the export and its spec tests
def test_one_epoch_on_full_mnist_beats_95_percent(tmp_path):
    """Seeds 000 and 002's CI check, on the shipped architecture and the project's trainer (2 replicas)."""
    shipped = Path(__file__).parent.parent / "results" / "mnist_20k" / "best.json"
    options = RetrainOptions(
        best=shipped, epochs=1, out=tmp_path, seed=0, data_dir=None, max_params=None, min_accuracy=95.0, processes=2
    )
    metrics = retrain(options)
    assert metrics["test_accuracy"] > 95.0
    assert spec_failures(tmp_path, env={**os.environ, "NAS_TEST_DATA": str(BUNDLED_MNIST)}) == set()


def test_a_result_folder_copied_anywhere_tests_itself_without_nas(good, tiny_dir, tmp_path):
    folder = tmp_path / "elsewhere" / "model"
    shutil.copytree(good, folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["data"]["dir"] = "/a/path/on/the/machine/that/trained/it"
    (folder / "metrics.json").write_text(json.dumps(metrics))
    blocker = tmp_path / "no_nas" / "nas"  # shadows the installed package: importing it fails
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("a result folder must not need nas")')
    env = {**os.environ, "PYTHONPATH": str(blocker.parent), "NAS_TEST_DATA": str(tiny_dir)}
    assert spec_failures(folder, env) == set()
    env.pop("NAS_TEST_DATA")
    assert spec_failures(folder, env) == {"test_test_accuracy_meets_floor"}  # told to set NAS_TEST_DATA


def test_shipped_spec_tests_are_the_current_template():
    """A shipped test_model.py is a copy of nas/spec_tests.py; a stale copy would test with stale code."""
    shipped = sorted((Path(__file__).parent.parent / "results").glob("*/test_model.py"))
    assert shipped, "results/ ships at least one model"
    for path in shipped:
        assert path.read_bytes() == SPEC_TESTS.read_bytes(), f"regenerate {path}: cp nas/spec_tests.py {path}"


def test_the_final_retrain_trains_on_every_training_image_unless_told_not_to(tmp_path, tiny_dir):
    # The tiny set has 1,200 training images, 300 of them the search's validation split.
    def trained_on(*argv: str) -> dict:
        out = tmp_path / "-".join(argv or ("default",))
        best = best_json(tmp_path, tiny_dir)
        assert (
            main([str(best), "--epochs", "1", "--processes", "1", "--min-accuracy", "0", "--out", str(out), *argv]) == 0
        )
        return json.loads((out / "metrics.json").read_text())

    everything, split = trained_on(), trained_on("--train-on", "split")
    assert everything["data"]["trained_on"].startswith("all") and "(1,200 images)" in everything["data"]["trained_on"]
    assert everything["val_accuracy"] is None  # its validation images were trained on
    assert everything["estimated_train_seconds"] is None  # too short a training to time
    assert "(900 images)" in split["data"]["trained_on"] and split["val_accuracy"] is not None


def test_a_retrain_is_as_long_as_its_space_plans_and_records_its_estimated_time(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(machine, "MIN_STEPS_TO_TIME_LAYOUT", 1)  # else too short a training to be timed
    text = (SPACES_DIR / "mnist_20k.toml").read_text().replace("epochs = 19 ", "epochs = 2 ")
    path = best_json(tmp_path, tiny_dir)
    path.write_text(json.dumps({**json.loads(path.read_text()), "space": space_record(parse_space(text, "planned"))}))
    assert main([str(path), "--processes", "1", "--min-accuracy", "0", "--out", str(tmp_path / "planned")]) == 0
    metrics = json.loads((tmp_path / "planned" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert metrics["estimated_train_seconds"] > 0
    assert metrics["machine"] == machine.this_cpu().describe()  # the same seed ends elsewhere on another CPU
    assert "s of training" in (tmp_path / "planned" / "train.log").read_text().splitlines()[0]


def test_a_known_design_retrains_with_the_winners_recipe(tmp_path, tiny_dir):
    out = tmp_path / "known"
    argv = [str(best_json(tmp_path, tiny_dir)), "--epochs", "1", "--processes", "1", "--out", str(out)]
    assert main([*argv, "--design", "shwethaamrutha-s6", "--min-accuracy", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["known_design"] == "shwethaamrutha-s6" and metrics["params"] == 6_198
    assert metrics["train"]["max_lr"] == 0.1 and metrics["train"]["weight_decay"] == 5e-4


def test_a_retrain_may_scale_its_augmented_images_and_records_it(tmp_path, tiny_dir):
    out = tmp_path / "scaled"
    argv = [str(best_json(tmp_path, tiny_dir)), "--epochs", "1", "--processes", "1", "--min-accuracy", "0"]
    assert main([*argv, "--augment-scale", "0.1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["augment_scale"] == 0.1  # best.json's recipe has none


def test_a_known_design_scaled_by_the_search_retrains_as_the_search_ran_it(tmp_path, tiny_dir):
    space = load_space(SPACES_DIR / "mnist_5k.toml")
    path = best_json(tmp_path, tiny_dir, max_params=5_000)
    path.write_text(json.dumps({**json.loads(path.read_text()), "space": space_record(space)}))
    widened = next(d for d in designs_to_beat(space) if d.name.startswith("era-s6-ram separable x"))
    argv = [str(path), "--epochs", "1", "--processes", "1", "--min-accuracy", "0", "--out", str(tmp_path / "k")]
    assert main([*argv, "--design", widened.name]) == 0
    metrics = json.loads((tmp_path / "k" / "metrics.json").read_text())
    assert metrics["known_design"] == widened.name and metrics["genome"] == widened.genome.to_dict()
    assert main([*argv[:-1], str(tmp_path / "other"), "--design", "era-s6-ram separable x0.10"]) == 2


def test_a_retrain_distils_from_a_frozen_model_and_records_which(good, tmp_path, tiny_dir, capsys):
    argv = [str(best_json(tmp_path, tiny_dir)), "--epochs", "1", "--processes", "1", "--min-accuracy", "0"]
    teacher = good / "model.pt2"
    assert main([*argv, "--out", str(tmp_path / "taught"), "--teacher", str(teacher), "--distill-weight", "0.3"]) == 0
    metrics = json.loads((tmp_path / "taught" / "metrics.json").read_text())
    assert metrics["teacher"] == {"model": str(teacher), "sha256": hashlib.sha256(teacher.read_bytes()).hexdigest()}
    assert metrics["train"]["distill_weight"] == 0.3
    assert "distilled from" in (tmp_path / "taught" / "train.log").read_text()
    capsys.readouterr()

    not_a_model = tmp_path / "model.pt2"
    not_a_model.write_text("weights")
    for bad, problem in [
        (["--teacher", str(not_a_model)], "not a frozen model"),
        (["--teacher", str(tmp_path / "missing.pt2")], "no such file"),
        (["--teacher", str(good / "weights.pt")], "not a frozen model"),  # a zip archive, but no program
        (["--distill-weight", "0.5"], "needs --teacher"),
        (["--teacher", str(teacher), "--distill-weight", "0"], "must lie in (0, 1]"),
    ]:
        assert main([*argv, "--out", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err
        assert problem in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_a_best_json_from_before_searched_recipes_and_block_genomes_still_loads(tmp_path):
    old = json.loads(json.dumps(OLD_BEST))
    winner = parse_best(json.dumps(old), "old.json")
    recipe = winner.recipe
    assert (recipe.augment_degrees, recipe.augment_shift, recipe.augment_scale) == (7.0, 2.0, 0.0)  # as those trained
    assert winner.genome.describe() == "20 | 8x1-12-24 | 24-20-8 fc d0.07"
    assert param_count(winner.genome) == 18_902


OLD_BEST = {
    "genome": {
        "stages": [{"widths": [20], "transition": 0}, {"widths": [12, 24], "transition": 8}, {"widths": [24, 20, 8]}],
        "dropout": 0.07,
        "head": "fc",
    },
    "max_params": 20_000,
    "train": {"max_lr": 0.053, "batch_size": 128, "weight_decay": 5e-4},
    "data": {"dir": None, "val_size": 10_000, "split_seed": 0},
}
