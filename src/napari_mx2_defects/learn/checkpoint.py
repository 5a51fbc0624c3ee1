"""Checkpoints: weights in safetensors plus a JSON card. Nothing is ever unpickled.

A card is validated against a schema before anything is built (:func:`validate_card`): known
architectures and encoders only (the smp class is looked up in a fixed table, never taken from
the card), a finite pixel size in a physical range, bounded channel and class counts.  Card and
weights must be regular files of bounded size (a link to ``/dev/zero`` is refused, not read).
Both are written atomically, together (:mod:`..io.atomic`).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import torch

from ..io.atomic import atomic_paths, check_output_file
from .models import ARCHITECTURES, MAX_CLASSES, ModelSpec, build_model, validate_spec

__all__ = ["CheckpointError", "ModelCard", "card_path", "default_model_path", "load_checkpoint",
           "read_card", "save_checkpoint", "validate_card"]

CARD_VERSION = 1
#: A card larger than this is refused unread (the shipped card is ~3 KB).
MAX_CARD_BYTES = 1024 * 1024
#: A weights file larger than this is refused unread (resnet152-unet in float32 is ~270 MB).
MAX_WEIGHTS_BYTES = 4 * 1024**3
#: Model pixel sizes a card may declare (Å).
CARD_PIXEL_RANGE_A = (0.02, 1.0)


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


def card_path(weights: str | Path) -> Path:
    """The card that belongs to a weights file (``m.safetensors`` → ``m.json``)."""
    return Path(weights).with_suffix(".json")


_card_path = card_path


def weights_path(path: str | Path) -> Path:
    """``path`` with the ``.safetensors`` suffix a checkpoint is saved under."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_card(data: dict, name: str = "model card") -> ModelCard:
    """A :class:`ModelCard` from parsed JSON, every field checked (CheckpointError naming the field)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{name}: not a valid model card (a JSON object is expected)")
    known = {f.name for f in fields(ModelCard)}
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise CheckpointError(f"{name}: not a valid model card (unknown fields {unknown})")
    missing = sorted(known - set(data) - {"version"})
    if missing:
        raise CheckpointError(f"{name}: not a valid model card (missing fields {missing})")
    version = data.get("version", CARD_VERSION)
    if version != CARD_VERSION or isinstance(version, bool):
        raise CheckpointError(f"{name}: card version {str(version)[:20]!r} is not supported (expected {CARD_VERSION})")
    arch = data["architecture"]
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise CheckpointError(f"{name}: architecture {str(arch)[:40]!r} is not known; known: "
                              f"{', '.join(ARCHITECTURES)}")
    try:
        spec = validate_spec(data["spec"])
    except ValueError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    pixel = data["pixel_size_A"]
    lo, hi = CARD_PIXEL_RANGE_A
    if not _finite_number(pixel) or not lo <= pixel <= hi:
        raise CheckpointError(f"{name}: pixel_size_A must be a finite number between {lo:g} and {hi:g} Å, "
                              f"got {str(pixel)[:40]}")
    classes = data["classes"]
    if not isinstance(classes, dict) or not 2 <= len(classes) <= MAX_CLASSES:
        raise CheckpointError(f"{name}: classes must map 2 to {MAX_CLASSES} class ids to names")
    if sorted(classes) != sorted(str(i) for i in range(len(classes))):
        raise CheckpointError(f"{name}: class ids must be \"0\" … \"{len(classes) - 1}\"")
    if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in classes.values()):
        raise CheckpointError(f"{name}: class names must be texts of 1 to 64 characters")
    for key in ("normalisation", "command"):
        if not isinstance(data[key], str):
            raise CheckpointError(f"{name}: {key} must be a text")
    for key in ("training_data", "metrics"):
        if not isinstance(data[key], dict):
            raise CheckpointError(f"{name}: {key} must be a JSON object")
    return ModelCard(architecture=arch, spec={**spec.as_dict()}, classes=dict(classes), pixel_size_A=float(pixel),
                     normalisation=data["normalisation"], training_data=data["training_data"],
                     command=data["command"], metrics=data["metrics"], version=CARD_VERSION)


def _open_regular(path: Path, limit: int, what: str):
    """Open ``path`` for reading if it is a regular file (links followed) no larger than ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CheckpointError(f"{path.name}: cannot open the {what} ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path.name}: the {what} is not a regular file")
        if info.st_size > limit:
            raise CheckpointError(f"{path.name}: the {what} is {info.st_size / 1024**2:.1f} MiB, more than the "
                                  f"{limit / 1024**2:g} MiB a {what} may have")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_card(card_file: str | Path) -> ModelCard:
    """Read and validate a model card (a regular JSON file of at most 1 MiB)."""
    card_file = Path(card_file)
    with _open_regular(card_file, MAX_CARD_BYTES, "model card") as fh:
        raw = fh.read(MAX_CARD_BYTES + 1)
    if len(raw) > MAX_CARD_BYTES:
        raise CheckpointError(f"{card_file.name}: the model card is larger than {MAX_CARD_BYTES // 1024} KiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{card_file.name}: not a valid model card ({reason})") from None
    return validate_card(data, card_file.name)


def save_checkpoint(model: torch.nn.Module, card: ModelCard, path: str | Path, half: bool = False,
                    overwrite: bool = True) -> Path:
    """Write ``path`` (.safetensors) and its JSON card atomically; ``half`` stores float16 weights.

    Both files are written to temporary names and renamed into place together (SIGINT held
    back), so a checkpoint never appears without its card or half-written.  With
    ``overwrite=False`` an existing weights file or card is refused (FileExistsError).
    """
    from safetensors.torch import save_file

    path = weights_path(path)
    card_file = card_path(path)
    check_output_file(path, overwrite=overwrite, others=[card_file])
    validate_card(json.loads(card.to_json()), card_file.name)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    with atomic_paths(path, card_file) as (tmp_weights, tmp_card):
        save_file(state, str(tmp_weights), metadata={"architecture": card.architecture})
        tmp_card.write_text(card.to_json())
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
    card_file = card_path(path)
    if not card_file.exists():
        raise CheckpointError(f"{path.name}: the model card {card_file.name} is missing beside it")
    card = read_card(card_file)
    with _open_regular(path, MAX_WEIGHTS_BYTES, "weights file"):
        pass
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from exc
    spec = ModelSpec(**{**card.spec, "decoder_channels": tuple(card.spec["decoder_channels"])})
    model = build_model(validate_spec(spec), n_classes=len(card.classes))
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
