"""Training utilities: models, offline datasets, sharding/batching and evaluation."""

from weaksync.training.data import (
    DATASET_NAMES,
    BatchStream,
    DataError,
    DataInfo,
    load_dataset,
    shard_indices,
)
from weaksync.training.evaluate import evaluate, evaluate_loss_and_accuracy
from weaksync.training.models import MODEL_NAMES, build_model

__all__ = [
    "DATASET_NAMES",
    "MODEL_NAMES",
    "BatchStream",
    "DataError",
    "DataInfo",
    "build_model",
    "evaluate",
    "evaluate_loss_and_accuracy",
    "load_dataset",
    "shard_indices",
]
