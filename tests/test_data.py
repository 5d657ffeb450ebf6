import gzip
import hashlib
import math

import pytest
import torch

from nas.data import BUNDLED_MNIST, augment, load_dataset, random_affine, read_idx, stratified_split, to_pixels
from nas.errors import UserError
from tests.helpers import write_idx, write_subset


def test_bundled_copy_matches_its_checksums():
    for line in (BUNDLED_MNIST / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((BUNDLED_MNIST / name).read_bytes()).hexdigest() == digest


def test_tiny_dataset_shapes_split_and_statistics(tiny_data):
    assert tiny_data.train.images.shape == (900, 1, 28, 28)
    assert tiny_data.val.images.shape == (300, 1, 28, 28)
    assert tiny_data.test.images.shape == (300, 1, 28, 28)
    assert tiny_data.train.images.dtype == torch.uint8
    # Statistics of this dataset's training images, not MNIST's well-known constants.
    pixels = to_pixels(torch.cat([tiny_data.train.images, tiny_data.val.images]))
    assert tiny_data.mean == pytest.approx(pixels.mean().item(), rel=1e-5)
    assert tiny_data.std == pytest.approx(pixels.std().item(), rel=1e-4)


def test_stratified_split_keeps_class_shares_and_is_seeded():
    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 60, 70, 80, 90, 100, 110, 120, 130, 140]))
    train, val = stratified_split(labels, 190, seed=3)
    assert len(val) == 190 and len(train) == len(labels) - 190
    assert set(train.tolist()).isdisjoint(val.tolist())
    share = torch.bincount(labels[val], minlength=10).float() / torch.bincount(labels).float()
    assert (share - 0.2).abs().max() < 0.02
    assert torch.equal(stratified_split(labels, 190, seed=3)[1], val)
    assert not torch.equal(stratified_split(labels, 190, seed=4)[1], val)


def test_raw_and_gzipped_idx_read_the_same(tmp_path):
    array = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    assert torch.equal(read_idx(write_idx(tmp_path / "a", array, compress=False)), array)
    assert torch.equal(read_idx(write_idx(tmp_path / "b", array, compress=True)), array)


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (lambda b: b[:-100], "truncated or corrupt"),
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "not an IDX"),
        (lambda b: b[:2], "too short"),
    ],
)
def test_corrupt_idx_files_are_user_errors(tmp_path, corrupt, problem):
    path = write_idx(tmp_path / "x", torch.zeros(3, 28, 28, dtype=torch.uint8), compress=False)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(UserError, match=problem):
        read_idx(path)


def test_bad_gzip_and_checksum_mismatch_are_user_errors(tmp_path):
    path = write_idx(tmp_path / "x", torch.zeros(3, 28, 28, dtype=torch.uint8))
    good = path.read_bytes()
    (tmp_path / "SHA256SUMS").write_text(f"{hashlib.sha256(good).hexdigest()}  {path.name}\n")
    read_idx(path)
    path.write_bytes(gzip.compress(gzip.decompress(good)[:-1] + b"\x01", mtime=0))
    with pytest.raises(UserError, match="checksum does not match"):
        read_idx(path)
    path.write_bytes(good[:20])
    with pytest.raises(UserError, match="cannot be read"):
        read_idx(path)


def test_missing_directory_file_and_wrong_shape(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_dataset(tmp_path / "absent")
    directory = write_subset(tmp_path / "d", 100, 20)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="no t10k-labels-idx1-ubyte"):
        load_dataset(directory, val_size=20)
    write_idx(directory / "train-images-idx3-ubyte", torch.zeros(100, 32, 32, dtype=torch.uint8))
    with pytest.raises(UserError, match="expected N x 28 x 28"):
        load_dataset(directory, val_size=20)


def test_search_data_leaves_out_the_test_set(tiny_dir):
    assert load_dataset(tiny_dir, val_size=300, include_test=False).test is None


def test_augment_keeps_shape_and_moves_pixels(tiny_data):
    images = to_pixels(tiny_data.train.images[:64])
    moved = augment(images, random_affine(64, 7.0, 2.0, torch.Generator().manual_seed(0)))
    assert moved.shape == images.shape
    assert 0 < (moved - images).abs().mean() and moved.sum().item() == pytest.approx(images.sum().item(), rel=0.1)
    assert torch.allclose(augment(images, random_affine(64, 0.0, 0.0, torch.Generator())), images, atol=1e-5)


def test_random_affine_stays_within_its_limits():
    theta = random_affine(1000, 7.0, 2.0, torch.Generator().manual_seed(0))
    angles = torch.atan2(theta[:, 1, 0], theta[:, 0, 0])
    assert angles.abs().max() <= math.radians(7.0) + 1e-6 and angles.abs().max() > math.radians(6.5)
    shifts_px = theta[:, :, 2] * 28 / 2
    assert shifts_px.abs().max() <= 2.0 + 1e-5 and shifts_px.abs().max() > 1.9


def test_random_scaling_keeps_the_rotations_and_shifts_drawn_without_it():
    """So every run made before scaling existed draws its augmentation as it did."""
    plain = random_affine(1000, 7.0, 2.0, torch.Generator().manual_seed(0))
    scaled = random_affine(1000, 7.0, 2.0, torch.Generator().manual_seed(0), max_scale=0.1)
    factors = torch.linalg.det(scaled[:, :, :2]).sqrt()
    torch.testing.assert_close(scaled[:, :, :2], plain[:, :, :2] * factors[:, None, None])
    assert torch.equal(scaled[:, :, 2], plain[:, :, 2])
    assert 0.9 - 1e-5 <= factors.min() < 0.91 and 1.09 < factors.max() <= 1.1 + 1e-5
    torch.testing.assert_close(torch.linalg.det(plain[:, :, :2]), torch.ones(1000))
