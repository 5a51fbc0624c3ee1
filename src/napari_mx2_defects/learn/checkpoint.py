"""Checkpoints: weights in safetensors plus a JSON card. Nothing is ever unpickled."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .models import ModelSpec, build_model

__all__ = ["CheckpointError", "ModelCard", "default_model_path", "load_checkpoint", "save_checkpoint"]

CARD_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is not a safetensors file with a valid card."""


@dataclass
class ModelCard:
    """What a model is and how it was made (stored as ``<name>.json`` beside ``<name>.safetensors``)."""

    architecture: str
    spec: dict
    classes: dict  # id -> name
    pixel_size_A: float
    normalisation: str
    training_data: dict
    command: str
    metrics: dict
    version: int = CARD_VERSION

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=str)


def _card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_checkpoint(model: torch.nn.Module, card: ModelCard, path: str | Path, half: bool = False) -> Path:
    """Write ``path`` (.safetensors) and its JSON card; ``half`` stores float16 weights."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"architecture": card.architecture})
    _card_path(path).write_text(card.to_json())
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Load weights and card; refuses anything but safetensors + card (never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"{path.name}: only .safetensors checkpoints are loaded (pickled .pt/.pth/.ckpt files can run code)"
        )
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    card_file = _card_path(path)
    if not card_file.exists():
        raise CheckpointError(f"{path.name}: the model card {card_file.name} is missing beside it")
    try:
        card = ModelCard(**json.loads(card_file.read_text()))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{card_file.name}: not a valid model card ({exc})") from exc
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from exc
    spec = ModelSpec(**{**card.spec, "decoder_channels": tuple(card.spec["decoder_channels"])})
    model = build_model(spec, n_classes=len(card.classes))
    expected = set(model.state_dict())
    # checkpoints written before unused encoder stages were pruned still carry them
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
             if k in expected or not k.startswith(("encoder.layer3.", "encoder.layer4."))}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path.name}: weights do not fit the architecture in its card ({exc})") from exc
    model.eval()
    return model.to(device), card


def default_model_path() -> Path:
    """The model shipped in the package."""
    return Path(str(resources.files("napari_mx2_defects.learn").joinpath("default_model.safetensors")))
