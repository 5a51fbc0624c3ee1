"""Network architectures, all from segmentation-models-pytorch, named in every model card.

No pretrained encoder weights are used (nothing is downloaded): every model is trained here on
digital twins.

Nothing in a model card chooses which code runs: the smp classes, encoders and attention types a
:class:`ModelSpec` may name are fixed allow-lists here (:data:`SMP_CLASSES`, :data:`ENCODERS`,
:data:`ATTENTION_TYPES`), and :func:`validate_spec` checks every field (types, bounded depth and
channel counts) before anything is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

__all__ = ["ARCHITECTURES", "ATTENTION_TYPES", "ENCODERS", "MAX_CLASSES", "MAX_DECODER_CHANNELS", "SMP_CLASSES",
           "ModelSpec", "build_model", "pick_device", "validate_spec"]

#: smp model classes a spec may name: the name in a card → the attribute of
#: ``segmentation_models_pytorch`` (a fixed table: a card never picks an arbitrary attribute).
SMP_CLASSES: dict[str, str] = {"Unet": "Unet"}
#: Encoders a spec may name (smp's ResNets; no pretrained weights are ever fetched).
ENCODERS: frozenset[str] = frozenset({"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"})
#: Decoder attention types (None: plain decoder).
ATTENTION_TYPES: frozenset = frozenset({None, "scse"})
#: Largest channel count of one decoder stage, and most output classes.
MAX_DECODER_CHANNELS = 1024
MAX_CLASSES = 256


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_spec(spec: ModelSpec | dict) -> ModelSpec:
    """A :class:`ModelSpec` whose every field is known and bounded (ValueError naming the field otherwise).

    ``spec`` may be a dict from a model card (``decoder_channels`` a list); unknown keys are refused.
    """
    if isinstance(spec, ModelSpec):
        data = spec.as_dict()
    elif isinstance(spec, dict):
        data = dict(spec)
    else:
        raise ValueError(f"model spec must be a mapping, not {type(spec).__name__}")
    known = set(ModelSpec.__dataclass_fields__)
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise ValueError(f"model spec: unknown fields {unknown}; known: {', '.join(sorted(known))}")
    for key in ("smp_class", "encoder_name"):
        if key not in data:
            raise ValueError(f"model spec: '{key}' is missing")
    smp_class, encoder = data["smp_class"], data["encoder_name"]
    if not isinstance(smp_class, str) or smp_class not in SMP_CLASSES:
        raise ValueError(f"model spec: smp_class {str(smp_class)[:40]!r} is not supported; known: "
                         f"{', '.join(SMP_CLASSES)}")
    if not isinstance(encoder, str) or encoder not in ENCODERS:
        raise ValueError(f"model spec: encoder {str(encoder)[:40]!r} is not supported; known: "
                         f"{', '.join(sorted(ENCODERS))}")
    depth = data.get("encoder_depth", 5)
    if not _is_int(depth) or not 1 <= depth <= 5:
        raise ValueError(f"model spec: encoder_depth must be a whole number from 1 to 5, got {str(depth)[:40]!r}")
    channels = data.get("decoder_channels", ModelSpec.decoder_channels)
    if not isinstance(channels, (list, tuple)) or len(channels) != depth:
        raise ValueError(f"model spec: decoder_channels must list {depth} channel counts (one per encoder stage)")
    for c in channels:
        if not _is_int(c) or not 1 <= c <= MAX_DECODER_CHANNELS:
            raise ValueError(f"model spec: decoder channel counts must be whole numbers from 1 to "
                             f"{MAX_DECODER_CHANNELS}, got {str(c)[:40]!r}")
    attention = data.get("decoder_attention_type")
    if attention not in ATTENTION_TYPES:
        raise ValueError(f"model spec: decoder_attention_type {str(attention)[:40]!r} is not supported; known: "
                         f"none, {', '.join(sorted(a for a in ATTENTION_TYPES if a))}")
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > 10_000:
        raise ValueError("model spec: description must be a text of at most 10000 characters")
    return ModelSpec(smp_class=smp_class, encoder_name=encoder, encoder_depth=depth,
                     decoder_channels=tuple(channels), decoder_attention_type=attention, description=description)


def build_model(architecture: str | ModelSpec, n_classes: int) -> torch.nn.Module:
    """A freshly initialised network with one input channel and ``n_classes`` outputs.

    ``architecture`` is a name from :data:`ARCHITECTURES` or a spec (validated with
    :func:`validate_spec`); unknown names and specs are a ValueError.
    """
    import segmentation_models_pytorch as smp

    if isinstance(architecture, str):
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture[:40]!r}; choose from {', '.join(ARCHITECTURES)}")
        spec = ARCHITECTURES[architecture]
    else:
        spec = validate_spec(architecture)
    if not _is_int(n_classes) or not 2 <= n_classes <= MAX_CLASSES:
        raise ValueError(f"number of classes must be a whole number from 2 to {MAX_CLASSES}, got {n_classes!r}")
    cls = getattr(smp, SMP_CLASSES[spec.smp_class])
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
