"""Choosing precision, layout and replicas per machine: the choice from measurements, the cache, real timing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from nas import machine
from nas.genome import Block, Genome
from nas.machine import Setting
from nas.model import build_model, with_normalisation
from nas.train import TrainConfig, train
from tests.helpers import TINY_GENOME, fake_profile


def test_avx2_like_figures_choose_fp32_and_replicas():
    """bf16 5x slower (an AVX2-only CPU): fp32, channels_last, two one-thread replicas."""
    profile = fake_profile(fp32=2000, bf16=400, one_process=2500, two_processes=3500)
    assert profile.best() == Setting("fp32", True, 2)


def test_bf16_is_chosen_only_where_it_was_measured_faster():
    assert fake_profile(fp32=2000, bf16=2600, one_process=2500, two_processes=3500).best().precision == "bf16"
    assert fake_profile(fp32=2000, bf16=1990, one_process=2500, two_processes=3500).best().precision == "fp32"


def test_one_process_wins_where_replicas_measured_slower():
    assert fake_profile(fp32=2000, bf16=400, one_process=3000, two_processes=2800).best().processes == 1


def test_forced_values_override_the_measurement():
    profile = fake_profile(fp32=2000, bf16=400, one_process=2500, two_processes=3500)
    assert profile.best(precision="bf16") == Setting("bf16", True, 2)
    assert profile.best(processes=3) == Setting("fp32", True, 3)


def test_one_core_machines_train_in_one_process():
    assert fake_profile(fp32=2000, bf16=400, one_process=2000, two_processes=None).best().processes == 1


def test_a_config_resolves_from_the_cached_profile_and_the_network_and_keeps_what_it_forces(tiny_data, monkeypatch):
    model = build_model(TINY_GENOME)
    timed = []

    def time_layouts(network, images, precision):
        timed.append((network, images.shape, precision))
        return machine.LayoutTiming(channels_last=0.02, contiguous=0.01)

    monkeypatch.setattr(machine, "time_layouts", time_layouts)
    # conftest cached fp32, channels_last, one process for the whole session; the layout is the network's.
    resolved = TrainConfig(epochs=100, batch_size=32).resolved(model, tiny_data.train)
    assert resolved == TrainConfig(epochs=100, batch_size=32, precision="fp32", channels_last=False, processes=1)
    assert timed == [(model, (32, 1, 28, 28), "fp32")]
    TrainConfig(epochs=100, batch_size=32, processes=2).resolved(model, tiny_data.train)
    assert timed[-1][1] == (16, 1, 28, 28)  # one replica's share of a batch
    forced = TrainConfig(epochs=100, precision="bf16", channels_last=False, processes=2)
    assert forced.resolved(model, tiny_data.train) == forced
    # Too short a training to pay for the timing (29 steps, against 34 timed): the profile's layout.
    assert TrainConfig(epochs=1, batch_size=32).resolved(model, tiny_data.train).channels_last is True
    assert len(timed) == 2
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(epochs=1, precision="fp16")


def test_a_training_s_time_is_estimated_from_its_timed_steps_and_the_machine_s_overhead(tiny_data, monkeypatch):
    model = build_model(TINY_GENOME)
    threads = []

    def time_layouts(network, images, precision):
        threads.append(torch.get_num_threads())
        return machine.LayoutTiming(channels_last=0.02, contiguous=0.01)

    monkeypatch.setattr(machine, "time_layouts", time_layouts)
    # 1,000 images in batches of 32: 32 steps an epoch; conftest's profile: one process, each trainer
    # step 1.25 bare steps and 2 ms.
    config = TrainConfig(epochs=30, batch_size=32)
    assert config.estimated_seconds(model, tiny_data.train, 1000) == pytest.approx(30 * 32 * (0.01 * 1.25 + 0.002))
    forced = TrainConfig(epochs=30, batch_size=32, channels_last=True)  # the layout it will train in
    assert forced.estimated_seconds(model, tiny_data.train, 1000) == pytest.approx(30 * 32 * (0.02 * 1.25 + 0.002))
    # The layout is chosen, and the step timed, with the threads a training run gets, wherever this runs.
    assert set(threads) == {os.cpu_count()}


def test_a_network_s_layouts_are_timed_once_and_cached_per_batch_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path))
    model, images = build_model(TINY_GENOME), torch.rand(16, 1, 28, 28)
    rounds = machine.LAYOUT_ROUNDS
    timed, seconds = [], {True: 2.0 * rounds, False: 1.0 * rounds}  # contiguous faster
    monkeypatch.setattr(machine, "_layout_step_seconds", lambda *args: timed.append(args[1].shape) or seconds)
    assert machine.time_layouts(model, images, "fp32") == machine.LayoutTiming(channels_last=2.0, contiguous=1.0)
    assert machine.time_layouts(model, images, "fp32").channels_last_is_faster is False
    seconds = {True: 1.0 * rounds, False: 2.0 * rounds}  # channels-last faster from now on
    assert machine.time_layouts(model, images, "fp32").channels_last_is_faster is False  # from the cache
    other_rate = build_model(dataclasses.replace(TINY_GENOME, dropout=TINY_GENOME.dropout / 2))
    assert machine.time_layouts(other_rate, images, "fp32").channels_last_is_faster is False  # a rate times nothing
    assert len(timed) == 1
    assert machine.time_layouts(model, images[:8], "fp32").channels_last_is_faster is True  # another batch shape
    other = build_model(Genome(stages=((Block(4),),), dropout=0.05, head="gap"))
    assert machine.time_layouts(other, images, "fp32").step_seconds(channels_last=True) == 1.0  # another network
    assert len(timed) == 3
    path = machine.cache_path(machine.this_cpu(), "layouts")
    for unreadable in ("[torn", json.dumps({key: True for key in json.loads(path.read_text())})):  # or an older cache
        path.write_text(unreadable)
        assert machine.time_layouts(model, images, "fp32").channels_last_is_faster is True  # timed again
    assert len(timed) == 5


def test_timing_the_layouts_leaves_the_network_and_the_random_state_alone():
    model, images = build_model(TINY_GENOME), torch.rand(8, 1, 28, 28)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    seconds = machine._layout_step_seconds(model, images, "fp32")
    assert torch.equal(torch.rand(1), expected)
    assert seconds[True] > 0 and seconds[False] > 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]) and value.is_contiguous()


def test_the_cache_is_read_not_remeasured_and_a_corrupt_one_is_remeasured(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path))
    measured = fake_profile(fp32=1000, bf16=3000, one_process=2000, two_processes=1000)
    calls = []
    monkeypatch.setattr(machine, "measure", lambda cpu: calls.append(cpu) or measured)
    assert machine.profile(announce=lambda line: None) == measured
    assert machine.profile(announce=lambda line: None) == measured
    assert len(calls) == 1
    path = machine.cache_path(machine.this_cpu())
    assert json.loads(path.read_text())["cpu"]["model"] == machine.this_cpu().model
    path.write_text("{torn")
    assert machine.profile(announce=lambda line: None) == measured
    assert len(calls) == 2


def test_an_unwritable_cache_is_measured_anyway_and_said_once(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NAS_CACHE_DIR", str(blocker / "cache"))  # under a file: cannot be made
    measured = fake_profile(fp32=1000, bf16=3000, one_process=2000, two_processes=1000)
    monkeypatch.setattr(machine, "measure", lambda cpu: measured)
    lines = []
    assert machine.profile(announce=lines.append) == measured
    assert any("set NAS_CACHE_DIR" in line for line in lines)


def test_a_cache_that_cannot_be_written_is_measured_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path))
    measured = fake_profile(fp32=1000, bf16=3000, one_process=2000, two_processes=1000)
    calls = []
    monkeypatch.setattr(machine, "measure", lambda cpu: calls.append(cpu) or measured)

    def full_disk(path, profile):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(machine, "_write", full_disk)
    lines = []
    assert machine.profile(announce=lines.append) == measured
    assert len(calls) == 1 and any("No space left" in line for line in lines)


def test_the_cache_key_changes_with_the_cpu_and_the_openmp_wait_policy(monkeypatch):
    cpu = machine.this_cpu()
    other = machine.Cpu(cpu.model, "AVX512", not cpu.native_bf16, cpu.cores)
    assert machine.cache_path(cpu) != machine.cache_path(other)
    passive = machine.cache_path(cpu)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert machine.cache_path(cpu) != passive


@pytest.mark.slow
def test_measure_times_every_precision_and_layout_then_the_split():
    profile = machine.measure(seconds=0.05)
    singles = {(r.setting.precision, r.setting.channels_last) for r in profile.rates if r.threads == 1}
    assert singles == {("fp32", True), ("fp32", False), ("bf16", True), ("bf16", False)}
    assert all(r.samples_per_s > 0 for r in profile.rates)
    assert profile.trainer_step.scale >= 1 and profile.trainer_step.seconds >= 0  # never less than the bare step
    if profile.cpu.cores > 1:
        assert sorted(r.setting.processes for r in profile.rates if r.threads > 1) == [1, 2]
    assert machine.Profile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


def test_forced_fp32_and_bf16_both_train_to_the_same_accuracy(tiny_data):
    def accuracy(precision: str) -> float:
        torch.manual_seed(0)
        model = with_normalisation(build_model(TINY_GENOME), tiny_data.mean, tiny_data.std)
        config = TrainConfig(
            epochs=4, batch_size=32, max_lr=0.3, weight_decay=0, augment_degrees=0, augment_shift=0,
            precision=precision, processes=1,
        )  # fmt: skip
        return train(model, tiny_data, config)[-1].val_accuracy

    fp32, bf16 = accuracy("fp32"), accuracy("bf16")
    # Seen on an AVX2 EPYC: 55.7% and 53.7% (chance is 10%); bf16 rounds differently, it must not learn worse.
    assert fp32 > 45 and bf16 > 45
    assert bf16 == pytest.approx(fp32, abs=8)


@pytest.mark.parametrize("chosen, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_while_they_wait_unless_the_user_chose_otherwise(chosen, expected):
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    if chosen:
        env["OMP_WAIT_POLICY"] = chosen
    # What torch's OpenMP runtime reads as it loads, with the trainer's imports.
    code = "import os, sys, nas.train; assert 'torch' in sys.modules; print(os.environ['OMP_WAIT_POLICY'])"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected
