"""What a data source looks like, known without loading it: the launcher checks paths up front and
servers size the model without reading a single sample."""

from __future__ import annotations

from pathlib import Path

from .data import (
    _CIFAR_HINT,
    CIFAR_TEST_FILE,
    CIFAR_TRAIN_FILES,
    DATASET_NAMES,
    IMAGE_FOLDER_SIZE,
    DataError,
    DataInfo,
    _cifar_root,
    _class_names,
    _require_pillow,
)

_FIXED = {
    "digits": DataInfo(num_classes=10, in_channels=1, image_size=8),
    "synthetic-cifar": DataInfo(num_classes=10, in_channels=3, image_size=32),
    "cifar10": DataInfo(num_classes=10, in_channels=3, image_size=32),
}


def check_data_source(name: str, data_dir: str | None) -> None:
    """Raise DataError (one line, with the fix) for an unknown name or a missing/incomplete folder."""
    if name not in DATASET_NAMES:
        raise DataError(f"data.name: unknown dataset '{name}': choose one of {', '.join(DATASET_NAMES)}")
    if name == "cifar10":
        root = _cifar_root(data_dir)
        for file in (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE):
            if not (root / file).is_file():
                raise DataError(f"cifar10: '{root / file}' is missing: {_CIFAR_HINT}")
    elif name == "imagefolder":
        _require_pillow()
        if data_dir is None or not Path(data_dir).expanduser().is_dir():
            raise DataError(
                f"imagefolder: data directory '{data_dir}' does not exist: "
                "point data.dir at a folder with train/<class>/ and val/<class>/"
            )
        _class_names(Path(data_dir).expanduser() / "train")
        _class_names(Path(data_dir).expanduser() / "val")


def dataset_info(name: str, data_dir: str | None) -> DataInfo:
    if name in _FIXED:
        return _FIXED[name]
    if name == "imagefolder":
        classes = _class_names(Path(str(data_dir)).expanduser() / "train")
        return DataInfo(num_classes=len(classes), in_channels=3, image_size=IMAGE_FOLDER_SIZE)
    raise DataError(f"data.name: unknown dataset '{name}': choose one of {', '.join(DATASET_NAMES)}")
