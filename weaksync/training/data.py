"""Datasets (offline only), deterministic sharding, and a fast infinite batch stream."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import WeaksyncError

DATASET_NAMES: tuple[str, ...] = ("digits", "synthetic-cifar", "cifar10", "imagefolder")

IMAGE_FOLDER_SIZE = 32
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
_CIFAR_HINT = "download the CIFAR-10 python version and set data.dir to its cifar-10-batches-py folder"


class DataError(WeaksyncError, ValueError):
    """Bad dataset name, path or file; the message names the problem and the fix on one line."""


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a dataset."""

    num_classes: int
    in_channels: int
    image_size: int


# --------------------------------------------------------------------------- loading


def load_dataset(
    name: str,
    data_dir: str | None = None,
    seed: int = 0,
    synthetic_size: int = 5000,
    image_size: int = IMAGE_FOLDER_SIZE,
) -> tuple[Dataset, Dataset, DataInfo]:
    """Return (train, test, info) for a named dataset; never downloads anything."""
    if name == "digits":
        return _load_digits()
    if name == "synthetic-cifar":
        return _load_synthetic_cifar(seed, synthetic_size)
    if name == "cifar10":
        return _load_cifar10(data_dir)
    if name == "imagefolder":
        return _load_imagefolder(data_dir, image_size)
    raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_NAMES)}")


def _load_digits() -> tuple[Dataset, Dataset, DataInfo]:
    """sklearn's 8x8 digits: ships with sklearn, so it works offline; the split ignores `seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=0)
    mean, std = float(x_train.mean()), float(x_train.std())
    train = _tensor_dataset((x_train - mean) / std, y_train)
    test = _tensor_dataset((x_test - mean) / std, y_test)
    return train, test, DataInfo(num_classes=10, in_channels=1, image_size=8)


def _tensor_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


# ----------------------------------------------------------------- synthetic CIFAR

_SYN_CLASSES = 10
_SYN_SIZE = 32
# Tuned so logistic regression tops out near 1/3 test accuracy while ResNet-20
# (SGD 0.1, momentum 0.9, batch 128) reaches ~60% after 100 steps and >90% after 300.
_SYN_MAX_SHIFT = 16
_SYN_NOISE = 4.0


def _load_synthetic_cifar(seed: int, synthetic_size: int) -> tuple[Dataset, Dataset, DataInfo]:
    """CIFAR-shaped, learnable, offline: shifted smooth class templates under heavy noise."""
    if synthetic_size < _SYN_CLASSES:
        raise DataError(
            f"synthetic-cifar: synthetic_size must be >= {_SYN_CLASSES}, got {synthetic_size}: "
            "raise data.synthetic_size"
        )
    templates = _synthetic_templates(np.random.default_rng([seed, 0]))
    x_train, y_train = _synthetic_samples(templates, synthetic_size, np.random.default_rng([seed, 1]))
    x_test, y_test = _synthetic_samples(templates, max(synthetic_size // 5, 1), np.random.default_rng([seed, 2]))
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    train = _tensor_dataset((x_train - mean) / std, y_train)
    test = _tensor_dataset((x_test - mean) / std, y_test)
    return train, test, DataInfo(num_classes=_SYN_CLASSES, in_channels=3, image_size=_SYN_SIZE)


def _synthetic_templates(rng: np.random.Generator) -> np.ndarray:
    """Smooth colour patterns on a padded canvas, one per class (10, 3, 64, 64)."""
    canvas = _SYN_SIZE + 2 * _SYN_MAX_SHIFT
    coarse = torch.from_numpy(rng.standard_normal((_SYN_CLASSES, 3, 8, 8)).astype(np.float32))
    fine = torch.from_numpy(rng.standard_normal((_SYN_CLASSES, 3, 16, 16)).astype(np.float32))
    up = torch.nn.functional.interpolate
    pattern = up(coarse, size=(canvas, canvas), mode="bicubic", align_corners=False)
    pattern = pattern + up(fine, size=(canvas, canvas), mode="bicubic", align_corners=False)
    return pattern.numpy()


def _synthetic_samples(templates: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random class, random crop (shift), random contrast and colour offset, plus pixel noise."""
    labels = rng.integers(0, _SYN_CLASSES, size=n).astype(np.int64)
    shifts = rng.integers(0, 2 * _SYN_MAX_SHIFT + 1, size=(n, 2))
    contrast = rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)).astype(np.float32)
    offset = rng.normal(0.0, 0.3, size=(n, 3, 1, 1)).astype(np.float32)
    noise = rng.standard_normal((n, 3, _SYN_SIZE, _SYN_SIZE), dtype=np.float32) * _SYN_NOISE
    images = np.empty((n, 3, _SYN_SIZE, _SYN_SIZE), dtype=np.float32)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
        images[i] = templates[label, :, dy : dy + _SYN_SIZE, dx : dx + _SYN_SIZE]
    return images * contrast + offset + noise, labels


# ------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(data_dir: str | None) -> tuple[Dataset, Dataset, DataInfo]:
    """The CIFAR-10 python version, normalised with the standard per-channel mean/std."""
    root = _cifar_root(data_dir)
    train_parts = [_read_cifar_batch(root / f) for f in CIFAR_TRAIN_FILES]
    x_train = np.concatenate([x for x, _ in train_parts])
    y_train = np.concatenate([y for _, y in train_parts])
    x_test, y_test = _read_cifar_batch(root / CIFAR_TEST_FILE)
    num_classes = _cifar_num_classes(root, y_train, y_test)
    train = _tensor_dataset(_normalise_uint8(x_train, CIFAR_MEAN, CIFAR_STD), y_train)
    test = _tensor_dataset(_normalise_uint8(x_test, CIFAR_MEAN, CIFAR_STD), y_test)
    return train, test, DataInfo(num_classes=num_classes, in_channels=3, image_size=32)


def _cifar_root(data_dir: str | None) -> Path:
    """Accept the cifar-10-batches-py folder itself or its parent."""
    if data_dir is None:
        raise DataError(f"cifar10: no data directory given: {_CIFAR_HINT}")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"cifar10: data directory '{data_dir}' does not exist: {_CIFAR_HINT}")
    nested = path / "cifar-10-batches-py"
    return nested if nested.is_dir() else path


class _SafeUnpickler(pickle.Unpickler):
    """Only lets numpy array reconstruction through, so a batch file cannot run code."""

    _ALLOWED = {
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry raw bytes
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"cifar10: missing file '{path}': {_CIFAR_HINT}")
    try:
        with path.open("rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"cifar10: file '{path}' is not a CIFAR-10 python batch ({exc}): {_CIFAR_HINT}") from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 N x 3 x 32 x 32, int64 N)."""
    batch = _unpickle(path)
    bad = f"cifar10: file '{path}' is not a CIFAR-10 python batch"
    if not isinstance(batch, dict):
        raise DataError(f"{bad} (expected a pickled dict): {_CIFAR_HINT}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{bad} (no b'data' / b'labels' keys): {_CIFAR_HINT}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"{bad} (data shape {data.shape}, {labels.shape[0]} labels; expected (N, 3072) and N labels): {_CIFAR_HINT}"
        )
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels


def _cifar_num_classes(root: Path, y_train: np.ndarray, y_test: np.ndarray) -> int:
    """10 unless batches.meta lists more label names (or labels exceed 9)."""
    meta_path = root / "batches.meta"
    names: Sequence[Any] = ()
    if meta_path.is_file():
        meta = _unpickle(meta_path)
        if isinstance(meta, dict):
            names = meta.get(b"label_names", meta.get("label_names", ())) or ()
    top = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return max(10, len(names), top)


def _normalise_uint8(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x.astype(np.float32) / 255.0 - m) / s


# ---------------------------------------------------------------------- image folder


class ImageFolderDataset(Dataset):
    """Lazily decoded RGB images resized to a fixed square size (ImageNet layout)."""

    def __init__(self, samples: list[tuple[Path, int]], image_size: int) -> None:
        self.samples = samples
        self.image_size = image_size
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
                array = np.asarray(rgb, dtype=np.float32) / 255.0
        except OSError as exc:
            raise DataError(f"imagefolder: cannot read image '{path}' ({exc}): remove or replace it") from None
        x = torch.from_numpy(array.copy()).permute(2, 0, 1)
        return (x - self._mean) / self._std, label


def _load_imagefolder(data_dir: str | None, image_size: int) -> tuple[Dataset, Dataset, DataInfo]:
    """data_dir/train/<class>/* and data_dir/val/<class>/*; classes are train's sorted subfolders."""
    _require_pillow()
    if data_dir is None:
        raise DataError("imagefolder: no data directory given: set data.dir to a folder with train/ and val/")
    if image_size < 2:
        raise DataError(f"imagefolder: image_size must be >= 2, got {image_size}: raise it")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"imagefolder: data directory '{data_dir}' does not exist: "
            "point data.dir at a folder with train/<class>/ and val/<class>/"
        )
    classes = _class_names(root / "train")
    val_classes = _class_names(root / "val")
    if val_classes != classes:
        missing = sorted(set(classes) ^ set(val_classes))
        raise DataError(
            f"imagefolder: train and val class folders differ ({', '.join(missing)}): "
            "give val/ the same class subfolders as train/"
        )
    train = ImageFolderDataset(_image_samples(root / "train", classes), image_size)
    test = ImageFolderDataset(_image_samples(root / "val", classes), image_size)
    return train, test, DataInfo(num_classes=len(classes), in_channels=3, image_size=image_size)


def _require_pillow() -> None:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise DataError(
            "imagefolder: pillow is not installed: pip install 'weaksync[vision]' (or pip install pillow)"
        ) from None


def _class_names(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"imagefolder: missing folder '{split_dir}': create it with one subfolder per class")
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"imagefolder: no class subfolders in '{split_dir}': add one folder per class")
    return names


def _image_samples(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (split_dir / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        samples.extend((p, label) for p in files)
    if not samples:
        raise DataError(f"imagefolder: no images in '{split_dir}': add {'/'.join(IMAGE_EXTENSIONS)} files")
    return samples


# ------------------------------------------------------------------- sharding/batches


def shard_indices(n: int, num_shards: int, shard: int, seed: int) -> list[int]:
    """Shard `shard` of a seeded permutation of range(n): disjoint, covering, sizes within 1."""
    if n < 0:
        raise DataError(f"shard_indices: n must be >= 0, got {n}: pass the dataset length")
    if num_shards < 1:
        raise DataError(f"shard_indices: num_shards must be >= 1, got {num_shards}: use the worker count")
    if not 0 <= shard < num_shards:
        raise DataError(f"shard_indices: shard must be in [0, {num_shards}), got {shard}: use the worker rank")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    return perm[shard::num_shards].tolist()


class BatchStream:
    """Infinite (x, y) batches over one shard, reshuffled every epoch from a seeded generator.

    Drops the last incomplete batch when the shard is larger than batch_size, so every batch
    has the same size; a shard no larger than batch_size is yielded whole each time.
    `epoch` is the 0-based epoch of the most recently returned batch (0 before the first);
    `batch_size` is the effective size, capped at the shard size.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise DataError(f"BatchStream: batch_size must be >= 1, got {batch_size}: raise it")
        if len(indices) == 0:
            raise DataError("BatchStream: the shard is empty: use fewer workers or a larger dataset")
        self.dataset = dataset
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.batch_size = min(batch_size, len(self.indices))
        self.batches_per_epoch = len(self.indices) // self.batch_size
        self.epoch = 0
        self._started = False
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._position = self.batches_per_epoch  # forces a shuffle on the first batch
        self._tensors = dataset.tensors if isinstance(dataset, TensorDataset) else None
        self._loader_iter: Any = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._position >= self.batches_per_epoch:
            self._new_epoch()
        self._position += 1
        if self._tensors is None:
            return next(self._loader_iter)
        start = (self._position - 1) * self.batch_size
        batch = self._order[start : start + self.batch_size]
        return self._tensors[0][batch], self._tensors[1][batch]

    def _new_epoch(self) -> None:
        """Reshuffle the shard; the slow path rebuilds a DataLoader over the new order."""
        self.epoch += int(self._started)
        self._started = True
        self._position = 0
        perm = torch.randperm(len(self.indices), generator=self._generator)
        self._order = self.indices[perm]
        if self._tensors is None:
            loader = DataLoader(
                Subset(self.dataset, self._order.tolist()),
                batch_size=self.batch_size,
                shuffle=False,
                drop_last=True,
                num_workers=0,
            )
            self._loader_iter = iter(loader)
