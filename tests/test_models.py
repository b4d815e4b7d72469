"""Model zoo shapes/sizes/determinism, digits-cnn training, and evaluate()."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from weaksync.training import MODEL_NAMES, BatchStream, build_model, evaluate, load_dataset
from weaksync.training.evaluate import evaluate_loss_and_accuracy


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "num_classes", "in_channels", "image_size"),
    [
        ("digits-cnn", 10, 1, 8),
        ("digits-cnn", 5, 1, 16),
        ("digits-cnn", 10, 3, 28),
        ("digits-cnn", 10, 3, 6),
        ("resnet20", 10, 3, 32),
        ("resnet20", 7, 1, 8),
        ("resnet56", 10, 3, 32),
        ("resnet50", 10, 3, 32),
    ],
)
def test_output_shapes(name: str, num_classes: int, in_channels: int, image_size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels, image_size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("digits-cnn", 100_000, 200_000),
        ("resnet20", 260_000, 290_000),
        ("resnet56", 830_000, 880_000),
        ("resnet50", 23_000_000, 24_000_000),
    ],
)
def test_parameter_counts(name: str, low: int, high: int) -> None:
    in_channels = 1 if name == "digits-cnn" else 3
    model = build_model(name, 10, in_channels, 8 if name == "digits-cnn" else 32)
    assert low <= _num_params(model) <= high


def test_digits_cnn_has_no_batchnorm_but_resnets_do() -> None:
    def has_bn(model: nn.Module) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    assert not has_bn(build_model("digits-cnn", 10, 1, 8))
    assert not list(build_model("digits-cnn", 10, 1, 8).buffers())
    assert has_bn(build_model("resnet20", 10, 3, 32))


def test_unknown_model_names_choices() -> None:
    with pytest.raises(
        ValueError, match=r"unknown model 'vgg'.*digits-cnn, digits-cnn-bn, resnet20, resnet20-gn, resnet56, resnet50"
    ):
        build_model("vgg", 10, 3, 32)


@pytest.mark.parametrize("bad", [{"num_classes": 0}, {"in_channels": 0}, {"image_size": 1}])
def test_bad_dimensions_rejected(bad: dict[str, int]) -> None:
    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32} | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_model("resnet20", **kwargs)


@pytest.mark.parametrize("name", ["digits-cnn", "resnet20"])
def test_init_is_deterministic_under_manual_seed(name: str) -> None:
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(name, 10, 3, 32).state_dict()

    a, b, c = state(1), state(1), state(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_model_names_are_all_buildable() -> None:
    assert MODEL_NAMES == ("digits-cnn", "digits-cnn-bn", "resnet20", "resnet20-gn", "resnet56", "resnet50")
    for name in MODEL_NAMES:
        assert isinstance(build_model(name, 10, 3, 32), nn.Module)


def test_resnet20_gn_has_the_same_weights_as_resnet20_and_no_running_statistics() -> None:
    bn, gn = build_model("resnet20", 10, 3, 32), build_model("resnet20-gn", 10, 3, 32)
    assert [p.shape for p in bn.parameters()] == [p.shape for p in gn.parameters()]
    assert not list(gn.buffers()) and any(isinstance(m, nn.GroupNorm) for m in gn.modules())


def test_resnet20_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, 32)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_digits_cnn_learns_digits_single_process() -> None:
    torch.manual_seed(0)
    train, test, info = load_dataset("digits")
    model = build_model("digits-cnn", info.num_classes, info.in_channels, info.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stream = BatchStream(train, range(len(train)), batch_size=128, seed=0)
    for _ in range(200):
        x, y = next(stream)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert evaluate(model, test) > 0.9


# ----------------------------------------------------------------------------- evaluate


class _ListDataset(Dataset):
    """Not a TensorDataset, to exercise the DataLoader path."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def _one_hot_data(n: int = 50, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % classes
    return nn.functional.one_hot(y, classes).float(), y


@pytest.mark.parametrize("wrap", [TensorDataset, _ListDataset])
def test_evaluate_perfect_and_wrong_models(wrap: type) -> None:
    x, y = _one_hot_data()
    dataset = wrap(x, y)
    assert evaluate(nn.Identity(), dataset, batch_size=7) == 1.0
    assert evaluate(nn.Sequential(nn.Identity()), dataset) == 1.0
    loss, acc = evaluate_loss_and_accuracy(_Scaled(-1.0), dataset, batch_size=16)
    assert acc == 0.0
    assert loss > 0


class _Scaled(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_evaluate_loss_matches_cross_entropy() -> None:
    x, y = _one_hot_data(30, 3)
    loss, acc = evaluate_loss_and_accuracy(_Scaled(5.0), TensorDataset(x, y), batch_size=4)
    expected = nn.functional.cross_entropy(x * 5.0, y).item()
    assert acc == 1.0
    assert loss == pytest.approx(expected, rel=1e-5)


def test_evaluate_restores_train_and_eval_modes_and_uses_no_grad() -> None:
    seen: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return self.inner(x)

    x, y = _one_hot_data()
    model = Probe()
    model.train()
    model.inner.eval()  # mixed modes must come back exactly
    evaluate(model, TensorDataset(x, y))
    assert model.training and not model.inner.training
    assert seen and all(mode == (False, False) for mode in seen)
    model.eval()
    evaluate(model, TensorDataset(x, y))
    assert not model.training


def test_evaluate_rejects_empty_dataset() -> None:
    empty = TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        evaluate(nn.Identity(), empty)
