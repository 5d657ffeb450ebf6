"""MNIST-format data: IDX files read once into memory as tensors, split, batched by slicing."""

from __future__ import annotations

import gzip
import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from nas.errors import UserError

BUNDLED_MNIST = Path(__file__).parent / "datasets" / "mnist"

IMAGES_MAGIC = 0x00000803  # big-endian: uint8 data, 3 dimensions
LABELS_MAGIC = 0x00000801  # big-endian: uint8 data, 1 dimension
FILE_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """Images as uint8, N x 1 x 28 x 28 (a quarter of float32's memory), and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None  # N x classes, a trained net's scores, for distillation

    def __len__(self) -> int:
        return len(self.labels)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float pixels in [0, 1]: per batch, so the dataset stays small in memory."""
    return images.float().div_(255)


@dataclass(frozen=True)
class Dataset:
    """Train/validation split of the training file, the test file if asked for, and normalisation."""

    train: Split
    val: Split
    test: Split | None  # None during a search: it never sees the test set
    mean: float  # of the training file's pixels in [0, 1]
    std: float


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise UserError(
        f"{directory}: no {stem} or {stem}.gz; pass --data-dir pointing at a directory "
        "that holds the four MNIST-format IDX files"
    )


def _verify_checksum(path: Path, data: bytes) -> None:
    """Check `data` against a SHA256SUMS (or .raw, for uncompressed bytes) beside the file."""
    for sums_name, payload in (("SHA256SUMS", path.read_bytes()), ("SHA256SUMS.raw", data)):
        sums = path.parent / sums_name
        if not sums.is_file():
            continue
        expected = {}
        for line in sums.read_text().splitlines():
            digest, _, name = line.strip().partition("  ")
            expected[name] = digest
        key = path.name if sums_name == "SHA256SUMS" else path.name.removesuffix(".gz")
        if key in expected and hashlib.sha256(payload).hexdigest() != expected[key]:
            raise UserError(
                f"{path}: checksum does not match {sums}; the file is corrupt, replace it with an intact copy"
            )


def read_idx(path: Path) -> torch.Tensor:
    """Read one IDX file (raw or gzipped) into a uint8 tensor, validating its header and size."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise UserError(f"{path}: cannot be read ({error}); replace it with an intact copy") from None
    _verify_checksum(path, data)
    if len(data) < 4:
        raise UserError(f"{path}: too short for an IDX header; replace it with an intact copy")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise UserError(f"{path}: not an IDX uint8 file (magic {magic:#010x}); check the file")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + math.prod(shape):
        raise UserError(
            f"{path}: header promises {shape} but holds {len(data) - header} bytes of data; "
            "the file is truncated or corrupt, replace it"
        )
    if math.prod(shape) == 0:
        raise UserError(f"{path}: header says {shape}: the file holds no data; pass a dataset with images in it")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _read_pair(directory: Path, images_key: str, labels_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(_find(directory, FILE_STEMS[images_key]))
    labels = read_idx(_find(directory, FILE_STEMS[labels_key]))
    if images.dim() != 3 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise UserError(
            f"{directory}: {images_key} have shape {tuple(images.shape)}, expected N x 28 x 28; "
            "pass an MNIST-format dataset"
        )
    if labels.dim() != 1 or len(labels) != len(images):
        raise UserError(f"{directory}: {len(labels)} labels for {len(images)} images; the files do not belong together")
    if int(labels.max()) >= NUM_CLASSES:
        raise UserError(f"{directory}: labels outside 0-9; pass an MNIST-format dataset")
    return images, labels.long()


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): every class keeps its share in validation; the same seed, the same split."""
    generator = torch.Generator().manual_seed(seed)
    fraction = val_size / len(labels)
    train_parts, val_parts = [], []
    for cls in range(NUM_CLASSES):
        members = torch.nonzero(labels == cls).squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = round(len(members) * fraction)
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    train, val = torch.cat(train_parts), torch.cat(val_parts)
    # Rounding per class can miss the requested size by a few; move the difference.
    shortfall = val_size - len(val)
    if shortfall > 0:
        val, train = torch.cat([val, train[:shortfall]]), train[shortfall:]
    elif shortfall < 0:
        train, val = torch.cat([train, val[:-shortfall]]), val[-shortfall:]
    return train.sort().values, val.sort().values


def data_directory(data_dir: Path | str | None) -> Path:
    """The directory to read: the given one, or the copy bundled with the package."""
    directory = Path(data_dir) if data_dir is not None else BUNDLED_MNIST
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory; pass --data-dir with the four IDX files")
    return directory


def _as_split(images: torch.Tensor, labels: torch.Tensor) -> Split:
    return Split(images.unsqueeze(1), labels)


def pixel_statistics(images: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of uint8 images as pixels in [0, 1], exact, from a 256-bin histogram."""
    counts = torch.bincount(images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum()
    mean = (counts * values).sum() / n
    variance = (counts * (values - mean) ** 2).sum() / (n - 1)
    return mean.item(), variance.sqrt().item()


def load_test_split(data_dir: Path | str | None = None) -> Split:
    """Only the test file: for the final report and the generated spec tests."""
    return _as_split(*_read_pair(data_directory(data_dir), "test_images", "test_labels"))


def load_dataset(
    data_dir: Path | str | None = None, val_size: int = 10_000, seed: int = 0, include_test: bool = True
) -> Dataset:
    """Load an MNIST-format directory (the bundled copy by default) and split off validation."""
    directory = data_directory(data_dir)
    train_images, train_labels = _read_pair(directory, "train_images", "train_labels")
    if not 0 < val_size < len(train_labels):
        raise UserError(f"validation size {val_size} must lie between 0 and {len(train_labels)}; change --val-size")
    train_idx, val_idx = stratified_split(train_labels, val_size, seed)

    mean, std = pixel_statistics(train_images)
    return Dataset(
        train=_as_split(train_images[train_idx], train_labels[train_idx]),
        val=_as_split(train_images[val_idx], train_labels[val_idx]),
        test=load_test_split(directory) if include_test else None,
        mean=mean,
        std=std,
    )


def with_validation_in_training(data: Dataset) -> Dataset:
    """The same data with the validation images added to training: for a final model, once the search has chosen.

    Validation figures then measure fit to images it trained on, not generalisation.
    """
    train = Split(torch.cat([data.train.images, data.val.images]), torch.cat([data.train.labels, data.val.labels]))
    return replace(data, train=train)


def random_affine(
    n: int, max_degrees: float, max_shift: float, generator: torch.Generator, max_scale: float = 0.0, size: int = 28
) -> torch.Tensor:
    """n random rotations, translations and scalings of `size`-pixel images, as affine_grid's n x 2 x 3 matrices.

    The scale factor lies in [1 - max_scale, 1 + max_scale]; with max_scale 0 none is drawn, so the
    generator, and every run made before scaling existed, draws as it did.
    """
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
    # affine_grid works in [-1, 1] coordinates: one pixel is 2/size of that range.
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift * 2 / size
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    if max_scale:
        # The matrix maps output pixels to input ones: a factor above 1 shows the digit smaller.
        theta[:, :, :2] *= 1 + (torch.rand(n, 1, 1, generator=generator) * 2 - 1) * max_scale
    return theta


def augment(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its affine matrix (from `random_affine`), in one batched call."""
    if not len(images):
        return images  # a replica's empty share of a short last batch; affine_grid refuses it
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
