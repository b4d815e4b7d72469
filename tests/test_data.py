"""Offline datasets, the CIFAR-10 / image-folder readers, sharding and BatchStream."""

from __future__ import annotations

import collections
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset, TensorDataset

from weaksync.training import (
    DATASET_NAMES,
    BatchStream,
    DataError,
    DataInfo,
    load_dataset,
    shard_indices,
)
from weaksync.training.data import CIFAR_MEAN, CIFAR_STD

# ---------------------------------------------------------------------------- digits


def test_digits_shapes_classes_and_normalisation() -> None:
    train, test, info = load_dataset("digits")
    assert info == DataInfo(num_classes=10, in_channels=1, image_size=8)
    assert isinstance(train, TensorDataset) and isinstance(test, TensorDataset)
    x, y = train.tensors
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and len(test) == 360
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2
    assert set(y.tolist()) == set(test.tensors[1].tolist()) == set(range(10))


def test_digits_split_is_fixed_regardless_of_seed() -> None:
    a_train, a_test, _ = load_dataset("digits", seed=0)
    b_train, b_test, _ = load_dataset("digits", seed=123)
    for a, b in [(a_train, b_train), (a_test, b_test)]:
        assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors))


def test_unknown_dataset_names_choices() -> None:
    assert DATASET_NAMES == ("digits", "synthetic-cifar", "cifar10", "imagefolder")
    with pytest.raises(DataError, match="unknown dataset 'mnist'.*digits, synthetic-cifar, cifar10, imagefolder"):
        load_dataset("mnist")
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------- synthetic CIFAR


def test_synthetic_cifar_shapes_and_determinism() -> None:
    train, test, info = load_dataset("synthetic-cifar", seed=7, synthetic_size=200)
    assert info == DataInfo(num_classes=10, in_channels=3, image_size=32)
    assert train.tensors[0].shape == (200, 3, 32, 32) and len(test) == 40
    assert train.tensors[0].dtype == torch.float32 and train.tensors[1].dtype == torch.int64
    assert 0 <= int(train.tensors[1].min()) and int(train.tensors[1].max()) <= 9
    again, again_test, _ = load_dataset("synthetic-cifar", seed=7, synthetic_size=200)
    other, _, _ = load_dataset("synthetic-cifar", seed=8, synthetic_size=200)
    assert all(torch.equal(a, b) for a, b in zip(train.tensors, again.tensors))
    assert all(torch.equal(a, b) for a, b in zip(test.tensors, again_test.tensors))
    assert not torch.equal(train.tensors[0], other.tensors[0])


def test_synthetic_cifar_is_learnable_but_not_linearly_trivial() -> None:
    from sklearn.linear_model import LogisticRegression

    train, test, _ = load_dataset("synthetic-cifar", seed=3, synthetic_size=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=100, C=0.01).fit(
            train.tensors[0].flatten(1).numpy(), train.tensors[1].numpy()
        )
    accuracy = clf.score(test.tensors[0].flatten(1).numpy(), test.tensors[1].numpy())
    assert 0.2 < accuracy < 0.7  # clearly above 10% chance, far from separable


def test_synthetic_cifar_rejects_tiny_size() -> None:
    with pytest.raises(DataError, match="synthetic_size must be >= 10"):
        load_dataset("synthetic-cifar", synthetic_size=3)


# ------------------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, per_batch: int = 3, meta: bool = True, protocol: int = 2) -> dict[str, np.ndarray]:
    """Tiny batches in the exact python-pickle layout of cifar-10-batches-py."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written: dict[str, np.ndarray] = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        with (root / name).open("wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = data
        written[name + "_labels"] = np.asarray(labels)
    if meta:
        with (root / "batches.meta").open("wb") as f:
            names = [
                n.encode()
                for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
            ]
            pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f, protocol=2)
    return written


def _normalised(data: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize(("use_parent", "protocol"), [(False, 2), (True, 2), (False, pickle.HIGHEST_PROTOCOL)])
def test_cifar10_reads_python_batches(tmp_path: Path, use_parent: bool, protocol: int) -> None:
    root = tmp_path / "cifar-10-batches-py"
    written = _write_cifar(root, protocol=protocol)
    train, test, info = load_dataset("cifar10", data_dir=str(tmp_path if use_parent else root))
    assert info == DataInfo(num_classes=10, in_channels=3, image_size=32)
    assert train.tensors[0].shape == (15, 3, 32, 32) and len(test) == 3
    expected_x = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    expected_y = np.concatenate([written[f"data_batch_{i}_labels"] for i in range(1, 6)])
    assert torch.allclose(train.tensors[0], _normalised(expected_x), atol=1e-5)
    assert train.tensors[1].tolist() == expected_y.tolist()
    assert torch.allclose(test.tensors[0], _normalised(written["test_batch"]), atol=1e-5)
    assert test.tensors[1].tolist() == written["test_batch_labels"].tolist()


def test_cifar10_without_meta_still_loads(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "c", meta=False)
    _, _, info = load_dataset("cifar10", data_dir=str(tmp_path / "c"))
    assert info.num_classes == 10


def test_cifar10_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=r"cifar10: data directory '.*nope' does not exist: download"):
        load_dataset("cifar10", data_dir=str(missing))
    with pytest.raises(DataError, match="cifar10: no data directory"):
        load_dataset("cifar10")


def test_cifar10_missing_file_is_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing file '.*data_batch_4'"):
        load_dataset("cifar10", data_dir=str(tmp_path / "c"))


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2, 3],  # not a dict
        {b"data": np.zeros((2, 3072), np.uint8)},  # no labels
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},  # wrong row size
        collections.OrderedDict(a=1),  # a global outside the allow-list
    ],
)
def test_cifar10_bad_file_is_named(tmp_path: Path, payload: object) -> None:
    _write_cifar(tmp_path / "c")
    with (tmp_path / "c" / "test_batch").open("wb") as f:
        pickle.dump(payload, f)
    with pytest.raises(DataError, match="file '.*test_batch' is not a CIFAR-10 python batch"):
        load_dataset("cifar10", data_dir=str(tmp_path / "c"))


def test_cifar10_garbage_bytes(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "c")
    (tmp_path / "c" / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", data_dir=str(tmp_path / "c"))


# ---------------------------------------------------------------------- image folder


def _write_images(root: Path, split: str, classes: dict[str, tuple[int, int, int]], n: int) -> None:
    image_module = pytest.importorskip("PIL.Image", reason="pillow is not installed (pip install pillow)")
    for name, colour in classes.items():
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(n):
            size = (10 + i, 7 + 2 * i)  # different sizes: the loader must resize
            image_module.new("RGB", size, colour).save(folder / f"{i}.png")
        (folder / "notes.txt").write_text("ignored")


def test_imagefolder_loads_lazily_and_resizes(tmp_path: Path) -> None:
    classes = {"cat": (255, 0, 0), "ant": (0, 0, 255)}
    _write_images(tmp_path, "train", classes, 3)
    _write_images(tmp_path, "val", classes, 2)
    train, test, info = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=16)
    assert info == DataInfo(num_classes=2, in_channels=3, image_size=16)
    assert len(train) == 6 and len(test) == 4
    x, label = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert label == 0  # "ant" sorts first and is pure blue
    assert x[2].mean() > x[0].mean()
    _, cat_label = train[5]
    assert cat_label == 1 and train[5][0][0].mean() > train[5][0][2].mean()
    batch = next(BatchStream(train, range(len(train)), batch_size=4, seed=0))
    assert batch[0].shape == (4, 3, 16, 16) and batch[1].dtype == torch.int64


def test_imagefolder_class_mismatch(tmp_path: Path) -> None:
    _write_images(tmp_path, "train", {"a": (0, 0, 0), "b": (9, 9, 9)}, 1)
    _write_images(tmp_path, "val", {"a": (0, 0, 0), "c": (9, 9, 9)}, 1)
    with pytest.raises(DataError, match="train and val class folders differ"):
        load_dataset("imagefolder", data_dir=str(tmp_path))


def test_imagefolder_missing_val(tmp_path: Path) -> None:
    _write_images(tmp_path, "train", {"a": (0, 0, 0)}, 1)
    with pytest.raises(DataError, match="missing folder '.*val'"):
        load_dataset("imagefolder", data_dir=str(tmp_path))


def test_imagefolder_without_pillow_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(DataError, match=r"pip install 'weaksync\[vision\]'.*pip install pillow"):
        load_dataset("imagefolder", data_dir=str(tmp_path))


# -------------------------------------------------------------------------- sharding


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 400), num_shards=st.integers(1, 17), seed=st.integers(0, 2**31))
def test_shards_are_disjoint_covering_and_balanced(n: int, num_shards: int, seed: int) -> None:
    shards = [shard_indices(n, num_shards, s, seed) for s in range(num_shards)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert shards[0] == shard_indices(n, num_shards, 0, seed)


def test_shards_depend_on_seed() -> None:
    assert shard_indices(100, 4, 1, seed=0) != shard_indices(100, 4, 1, seed=1)


@pytest.mark.parametrize(("n", "num_shards", "shard"), [(-1, 1, 0), (10, 0, 0), (10, 2, 2), (10, 2, -1)])
def test_shard_indices_rejects_bad_arguments(n: int, num_shards: int, shard: int) -> None:
    with pytest.raises(DataError, match="shard_indices"):
        shard_indices(n, num_shards, shard, seed=0)


# ----------------------------------------------------------------------- BatchStream


def _indexed_dataset(n: int = 100) -> TensorDataset:
    """x[i] == i, so a batch's x tells which dataset rows it holds."""
    return TensorDataset(torch.arange(n).float().unsqueeze(1), torch.arange(n) % 10)


class _MapDataset(Dataset):
    def __init__(self, n: int = 100) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(i)]), i % 10


def _rows(batch: tuple[torch.Tensor, torch.Tensor]) -> list[int]:
    return batch[0].squeeze(1).long().tolist()


@pytest.mark.parametrize("dataset", [_indexed_dataset(), _MapDataset()], ids=["tensor", "map"])
def test_batchstream_covers_shard_once_per_epoch(dataset: Dataset) -> None:
    shard = shard_indices(100, 4, 2, seed=5)  # 25 rows
    stream = BatchStream(dataset, shard, batch_size=5, seed=1)
    assert stream.epoch == 0 and stream.batches_per_epoch == 5
    for epoch in range(3):
        rows = [r for _ in range(5) for r in _rows(next(stream))]
        assert sorted(rows) == sorted(shard)
        assert stream.epoch == epoch
    x, y = next(stream)
    assert stream.epoch == 3 and y.dtype == torch.int64 and y.tolist() == [r % 10 for r in _rows((x, y))]


def test_batchstream_reshuffles_and_is_reproducible() -> None:
    dataset, shard = _indexed_dataset(), list(range(40))

    def draw(seed: int) -> list[list[int]]:
        stream = BatchStream(dataset, shard, batch_size=8, seed=seed)
        return [_rows(next(stream)) for _ in range(15)]

    first = draw(3)
    assert first == draw(3)
    assert first != draw(4)
    assert first[:5] != first[5:10]  # a new order each epoch


def test_batchstream_tensor_and_map_paths_agree() -> None:
    shard = shard_indices(100, 3, 0, seed=0)
    fast = BatchStream(_indexed_dataset(), shard, batch_size=6, seed=9)
    slow = BatchStream(_MapDataset(), shard, batch_size=6, seed=9)
    for _ in range(12):
        a, b = next(fast), next(slow)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_batchstream_drops_incomplete_last_batch() -> None:
    stream = BatchStream(_indexed_dataset(), list(range(23)), batch_size=5, seed=0)
    assert stream.batches_per_epoch == 4
    epoch_rows = [_rows(next(stream)) for _ in range(4)]
    assert all(len(rows) == 5 for rows in epoch_rows)
    flat = [r for rows in epoch_rows for r in rows]
    assert len(set(flat)) == 20
    next(stream)
    assert stream.epoch == 1


def test_batchstream_small_shard_yields_whole_shard() -> None:
    shard = [3, 14, 15, 92]
    stream = BatchStream(_indexed_dataset(), shard, batch_size=32, seed=0)
    for epoch in range(3):
        assert sorted(_rows(next(stream))) == shard
        assert stream.epoch == epoch


def test_batchstream_rejects_bad_arguments() -> None:
    with pytest.raises(DataError, match="empty"):
        BatchStream(_indexed_dataset(), [], batch_size=4, seed=0)
    with pytest.raises(DataError, match="batch_size"):
        BatchStream(_indexed_dataset(), [1, 2], batch_size=0, seed=0)
