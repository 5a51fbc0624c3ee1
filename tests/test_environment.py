"""The torch / torchvision pairing that breaks on this kind of machine."""

from __future__ import annotations


def test_torchvision_ops_work_with_the_installed_torch():
    import torch
    import torchvision
    from torchvision.ops import nms

    keep = nms(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    # the local CPU-only 2.13.0 wheel must never be paired with the registry's CUDA torchvision
    assert torch.__version__ != "2.13.0+cpu", torchvision.__version__


def test_segmentation_models_pytorch_imports():
    import segmentation_models_pytorch as smp

    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=3)
    assert sum(p.numel() for p in model.parameters()) > 1e6
