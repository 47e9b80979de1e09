import math

import pytest
import torch

import bench
from bench.errors import RunFailed
from bench.presets import Recipe
from bench.registry import DATASETS
from bench.train import evaluate, lr_factor, make_batch, train


def test_cosine_schedule_with_warmup():
    r = Recipe(epochs=10, warmup_epochs=2, schedule="cosine")
    assert lr_factor(r, 0.0) == pytest.approx(0.0, abs=1e-6)
    assert lr_factor(r, 1.0) == pytest.approx(0.5)
    assert lr_factor(r, 2.0) == pytest.approx(1.0)
    assert lr_factor(r, 6.0) == pytest.approx(0.5)  # half way through the cosine part
    assert lr_factor(r, 10.0) == pytest.approx(0.0, abs=1e-12)


def test_step_schedule():
    r = Recipe(epochs=300, schedule="step", milestones=(150, 225), gamma=0.1)
    assert [lr_factor(r, e) for e in (0, 149.9, 150, 224, 225)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01])


def test_label_smoothing_is_cross_entropy_against_the_smoothed_target():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y, eps = torch.tensor([0, 1]), 0.3
    target = torch.full((2, 3), eps / 3) + (1 - eps) * torch.nn.functional.one_hot(y, 3)
    expected = -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    batch = make_batch(logits[:, :, None, None], y, 0.0, torch.Generator(), label_smoothing=eps)
    torch.testing.assert_close(batch.classification_loss(logits), expected)


def test_cutmix_batch_is_a_consistent_paste():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 2, 12, 12)
    y = torch.arange(8)
    batch = make_batch(x, y, 1.0, g)
    assert batch.mixed
    m = batch.mask
    torch.testing.assert_close(batch.x, m * batch.x_a + (1 - m) * x)
    assert batch.lam == pytest.approx(m[0].mean().item())
    # x_a is a permutation of x, labels permuted alike
    order = [int((batch.x_a[i:i + 1] - x).flatten(1).abs().sum(1).argmin()) for i in range(8)]
    assert batch.y_a.tolist() == order
    assert make_batch(x, y, 0.0, g).mask is None


def test_mixed_loss_weights_labels_by_area():
    g = torch.Generator().manual_seed(0)
    batch = make_batch(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), 1.0, g)
    logits = torch.randn(4, 5)
    ce = torch.nn.functional.cross_entropy
    expected = (1 - batch.lam) * ce(logits, batch.y) + batch.lam * ce(logits, batch.y_a)
    torch.testing.assert_close(batch.classification_loss(logits), expected)


def _toy():
    return DATASETS.get("toy-quadrants").obj(None)


def _fit(seed):
    torch.manual_seed(seed)
    model = bench.build_model("gap-fc", "resnet8", 4, in_channels=1)
    history = train(model, _toy(), Recipe(epochs=2, batch_size=32, lr=0.05), seed, torch.device("cpu"),
                    progress=False)
    return model, history


def test_training_is_deterministic_and_learns():
    (m1, h1), (m2, h2) = _fit(1), _fit(1)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert h1.train_loss == h2.train_loss
    assert len(h1.test_top1) == 2 and len(h1.lr) == 2
    assert h1.test_top1[-1] > 60  # chance is 25 %


def test_evaluate_counts_top_k():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[5.0, 4, 3, 2, 1, 0]]).expand(len(x), 6)

    class Split:
        def batches(self, bs, train, device):
            yield torch.zeros(4, 1), torch.tensor([0, 1, 4, 5])

    scores = evaluate(Fixed(), Split(), 8, torch.device("cpu"))
    assert scores["top1"] == 25.0 and scores["top5"] == 75.0
    assert scores["loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(torch.tensor([[5.0, 4, 3, 2, 1, 0]]).expand(4, 6),
                                          torch.tensor([0, 1, 4, 5])).item())


def test_nan_loss_fails_the_run():
    model = bench.build_model("gap-fc", "resnet8", 4, in_channels=1)
    with pytest.raises(RunFailed, match="loss became nan"):
        train(model, _toy(), Recipe(epochs=1, batch_size=32, lr=math.inf), 0,
              torch.device("cpu"), progress=False, check_every=1)


@pytest.mark.torch_version
@pytest.mark.parametrize("changes", [{"amp": "bf16"}, {"channels_last": True}])
def test_execution_settings_train(changes):
    torch.manual_seed(0)
    model = bench.build_model("cbam", "resnet8", 4, in_channels=1)
    history = train(model, _toy(), Recipe(epochs=1, batch_size=32, lr=0.05, **changes), 0,
                    torch.device("cpu"), progress=False)
    assert math.isfinite(history.train_loss[0])
    if changes.get("channels_last"):
        assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
