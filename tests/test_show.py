import json

from nas.genome import Genome, param_count
from nas.model import count_macs
from nas.show import main
from tests.helpers import best_json


def test_show_prints_every_layer_and_totals_against_the_budget(tmp_path, tiny_dir, capsys):
    path = best_json(tmp_path, tiny_dir)
    genome = Genome.from_dict(json.loads(path.read_text())["genome"])
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "Conv2d 1->8 3x3" in out and "BatchNorm2d" in out and "Dropout 0.050" in out
    assert f"{param_count(genome):,}" in out and f"{count_macs(genome):,}" in out
    assert f"{param_count(genome):,} of 20,000 parameters" in out


def test_show_rejects_a_bad_file_with_exit_2(tmp_path, capsys):
    path = tmp_path / "best.json"
    path.write_text("[]")
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
