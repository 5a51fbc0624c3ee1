"""Network architectures, all from segmentation-models-pytorch, named in every model card.

No pretrained encoder weights are used (nothing is downloaded): every model is trained here on
digital twins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

__all__ = ["ARCHITECTURES", "ModelSpec", "build_model", "pick_device"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build a network: smp class, encoder and their options."""

    smp_class: str
    encoder_name: str
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    decoder_attention_type: str | None = None
    description: str = ""

    def as_dict(self) -> dict:
        data = asdict(self)
        data["decoder_channels"] = list(self.decoder_channels)
        return data


#: The papers' families plus a light model for laptops.
ARCHITECTURES: dict[str, ModelSpec] = {
    "unet": ModelSpec("Unet", "resnet34", description="plain U-Net (the digital-twin paper's G-UNet family)"),
    "attention-unet": ModelSpec("Unet", "resnet34", decoder_attention_type="scse",
                                description="U-Net with scSE attention in the decoder"),
    "resnet152-unet": ModelSpec("Unet", "resnet152", description="deep-encoder U-Net (ResNet-152 encoder)"),
    "light": ModelSpec("Unet", "resnet18", encoder_depth=3, decoder_channels=(64, 32, 16),
                       description="light U-Net (first three ResNet-18 stages), fast on a laptop CPU"),
}


def build_model(architecture: str | ModelSpec, n_classes: int) -> torch.nn.Module:
    """A freshly initialised network with one input channel and ``n_classes`` outputs."""
    import segmentation_models_pytorch as smp

    spec = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
    if isinstance(architecture, str) and architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")
    cls = getattr(smp, spec.smp_class)
    kwargs = dict(encoder_name=spec.encoder_name, encoder_weights=None, encoder_depth=spec.encoder_depth,
                  decoder_channels=list(spec.decoder_channels), in_channels=1, classes=n_classes)
    if spec.decoder_attention_type:
        kwargs["decoder_attention_type"] = spec.decoder_attention_type
    model = cls(**kwargs)
    _prune_unused_stages(model.encoder, spec.encoder_depth)
    return model


#: ResNet stages that a shallower encoder never runs (smp builds them anyway).
_RESNET_STAGES = {4: "layer3", 5: "layer4"}


def _prune_unused_stages(encoder: torch.nn.Module, depth: int) -> None:
    """Drop ResNet stages beyond ``depth``: smp's forward skips them, but they would fill the checkpoint."""
    for stage, name in _RESNET_STAGES.items():
        if depth < stage and hasattr(encoder, name):
            delattr(encoder, name)


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU; a named device that is absent is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was chosen but no CUDA GPU is available here; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("Apple MPS was chosen but is not available here; use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(device)
