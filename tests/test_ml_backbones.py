"""The backbone registry: every registered backbone builds without weights and has the right shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml.backbones import available_backbones, create_backbone
from ml.errors import UnknownBackbone, WeightsUnavailable

torch.set_num_threads(1)


@pytest.mark.parametrize("name", available_backbones())
def test_backbone_builds_and_gives_features(name: str) -> None:
    backbone = create_backbone(name, pretrained=False).eval()
    size = 96 if name != "simple_cnn" else 64
    with torch.inference_mode():
        feats = backbone(torch.randn(2, 3, size, size))
        assert feats.shape == (2, backbone.feature_dim)
        assert torch.isfinite(feats).all()
        if backbone.has_imagenet_head:
            feats2, logits = backbone.features_and_imagenet(torch.randn(2, 3, size, size))
            assert logits.shape == (2, 1000) and feats2.shape == (2, backbone.feature_dim)
    prep = backbone.preprocessing
    assert prep.size > 0 and len(prep.mean) == len(prep.std) == 3


def test_registry_names() -> None:
    assert {"efficientnet_lite0", "resnet18", "simple_cnn"} <= set(available_backbones())
    assert create_backbone("efficientnet_lite0", pretrained=False).preprocessing.mean == (0.5, 0.5, 0.5)


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(UnknownBackbone) as info:
        create_backbone("resnet1800", pretrained=False)
    for name in available_backbones():
        assert name in str(info.value)


def test_resnet18_without_weights_file_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as info:
        create_backbone("resnet18", pretrained=True)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_partial_finetune_keeps_a_frozen_imagenet_branch() -> None:
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    backbone.prepare_finetune(9)
    assert backbone.finetune_state() == {"split_block": 8, "imagenet_branch": True}
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("tail.") for n in trainable)
    before = {k: v.clone() for k, v in backbone.imagenet_tail.state_dict().items()}
    backbone.train()
    opt = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    backbone(torch.randn(4, 3, 64, 64)).sum().backward()
    opt.step()
    after = backbone.imagenet_tail.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen branch untouched (BN stats too)
    assert not torch.equal(backbone.tail.conv_head.weight, backbone.imagenet_tail.conv_head.weight)


def test_distillation_pulls_the_trained_tail_toward_the_frozen_imagenet_answer() -> None:
    from ml.train import imagenet_distillation

    torch.manual_seed(0)  # the figures below depend on the input; other tests must not change it
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    backbone.prepare_finetune(3)
    x = torch.randn(4, 3, 64, 64)
    feats, student, teacher = backbone.eval().distill_outputs(x)
    assert feats.shape == (4, 1280) and student.shape == teacher.shape == (4, 1000)
    assert torch.allclose(student, teacher, atol=1e-4)  # nothing trained yet: the same answer
    assert float(imagenet_distillation(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(imagenet_distillation(torch.randn(4, 1000), teacher)) > 0.1
    shoe = teacher.clone()
    shoe[:, 770] += 8.0  # mass moved onto "running shoe" alone is penalised too
    assert float(imagenet_distillation(shoe, teacher)) > 0.1

    opt = torch.optim.Adam([p for p in backbone.parameters() if p.requires_grad], lr=1e-3)
    backbone.tail.conv_head.weight.data.mul_(1.5)  # a fine-tuned tail that has drifted
    losses = []
    for _ in range(4):  # eval mode: running BN statistics, no drop-connect, so losses compare
        _, student, teacher = backbone.distill_outputs(x)
        loss = imagenet_distillation(student, teacher)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in backbone.imagenet_tail.parameters())  # the teacher stays frozen
    with pytest.raises(NotImplementedError):
        create_backbone("simple_cnn", pretrained=False).distill_outputs(x)


def test_multiply_adds_and_the_floor_they_set() -> None:
    from ml.cost import dense_gflops, floor_ms, multiply_adds

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    x = torch.zeros(1, 3, 16, 16)
    assert multiply_adds(net, lambda: net(x)) == 8 * 16 * 16 * 27 + 8 * 16 * 16 * 9 + 4 * 8
    assert multiply_adds(net, lambda: net(torch.zeros(2, 3, 16, 16))) == 2 * multiply_adds(net, lambda: net(x))
    assert not net[0]._forward_hooks  # counting leaves the network as it was

    lite0 = create_backbone("efficientnet_lite0", pretrained=False).eval()
    macs = multiply_adds(lite0, lambda: lite0(torch.zeros(1, 3, 224, 224)))
    assert 0.35e9 < macs < 0.42e9  # the published ~0.4 B multiply-adds of EfficientNet-Lite0 at 224 px
    assert floor_ms(500_000_000, 100.0) == pytest.approx(10.0)
    assert 1.0 < dense_gflops(threads=1, size=256, repeats=2) < 10_000
