"""``mx2-defects dataset | train | segment | evaluate``.

Numbers are checked as they are parsed (:mod:`.core.validation`); output locations, datasets,
scheduler and sizes before any work; outputs are written atomically (:mod:`.io.atomic`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..core.parameters import ADAPT_PARAMETERS, FINETUNE_PARAMETERS, SEGMENT_PARAMETERS
from ..core.validation import BOUNDS, check_allocation
from .options import add_parameters, add_runtime_option, command_line, progress_printer
from .options import bound_type as _t

__all__ = ["SEGMENT_FILES", "add_learn_commands"]

#: What ``segment`` writes: the only names its ``--overwrite`` replaces.
SEGMENT_FILES = ["labels.tif", "defects.csv"]
#: What ``segment --adapt`` writes besides: the teaching, the adapted model's path and the agreement before and after.
ADAPT_FILES = ["adaptation.json"]
#: Peak bytes per pixel of segmentation at the model's pixel size (labels, scores, tiles, margin).
SEGMENT_BYTES_PER_PIXEL = 24


def _cmd_dataset(args):
    from ..core.validation import check_pair
    from ..learn.dataset import DatasetSpec, generate_dataset

    check_pair(BOUNDS["dose_min"], BOUNDS["dose_max"], args.dose_min, args.dose_max)
    defaults = DatasetSpec()
    spec = DatasetSpec(parents=args.parents.split(","), presets=args.presets.split(",") if args.presets else
                       defaults.presets, size_px=args.size, dose_range_e_per_A2=(args.dose_min, args.dose_max),
                       pixel_size_range_A=tuple(args.pixel_size or defaults.pixel_size_range_A),
                       source_size_range_A=tuple(args.source_size or defaults.source_size_range_A),
                       dopants=tuple(el.strip() for el in args.dopants.split(",") if el.strip()),
                       real_acquisition=args.real_acquisition, grain_boundaries=not args.no_grain_boundaries)
    out = generate_dataset(args.out, args.n, spec, seed=args.seed, scheduler=args.scheduler, workers=args.workers,
                           progress=progress_printer(args.quiet), overwrite=args.overwrite)
    print(f"wrote {args.n} samples to {out}")
    return 0


def _cmd_train(args):
    from ..learn.train import TrainConfig, train

    config = TrainConfig(architecture=args.architecture, pixel_size_A=args.model_pixel_size, epochs=args.epochs,
                         steps_per_epoch=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                         patience=args.patience, seed=args.seed, device=args.device, crop_px=args.crop,
                         init_from=str(args.init_from) if args.init_from else None)
    command = command_line()
    path, _ = train(args.dataset, args.out, config, command=command, progress=progress_printer(args.quiet),
                    overwrite=args.overwrite)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _cmd_segment(args):
    from ..inputs import image_plane, pixel_size_A
    from ..io.atomic import StagedOutput
    from ..io.formats import load_images
    from ..io.writer import LABELS_TITLE, write_calibrated_tiff
    from ..learn.inference import DEFECTS_COLUMNS, segment_image

    from ..analysis.objects import OBJECT_FILES

    if args.adapt and not args.material:
        raise ValueError("--adapt needs --material: the site physics that teaches the model fits the parent's lattice")
    if args.dopant and not args.adapt:
        raise ValueError("--dopant is used by --adapt here (the analysis takes it as analyze --dopant): add --adapt")
    names = SEGMENT_FILES + (OBJECT_FILES if args.objects else []) + (ADAPT_FILES if args.adapt else [])
    # before any work; a new result without --objects removes an older result's objects (they would not match)
    stage = StagedOutput(args.out, names, overwrite=args.overwrite, replaces=OBJECT_FILES + ADAPT_FILES)
    from ..learn.checkpoint import card_path, default_model_path, read_card

    model = default_model_path() if args.model == "default" else Path(args.model)
    if model.suffix != ".safetensors":
        raise ValueError(f"--model {model.name}: give a .safetensors checkpoint (its .json card beside it) "
                         f"or 'default'")
    if not model.is_file():
        raise ValueError(f"--model {model}: no such checkpoint" if args.model != "default" else
                         "the default model is not installed with this package; pass --model")
    card = read_card(card_path(model))  # a bad card is refused before the image is read
    image = load_images(args.image)[0]
    pixel = pixel_size_A(image.scale_A, image.calibrated, args.image_pixel_size_A, args.image.name)
    if pixel is None:
        raise ValueError(f"{args.image} has no calibration: pass --pixel-size in Å")
    ny, nx = image.data.shape[-2:]
    check_allocation(f"{args.image.name} at the model's pixel size", ny * nx * (pixel / card.pixel_size_A) ** 2,
                     SEGMENT_BYTES_PER_PIXEL, hint="crop or bin the image first")
    data, note = image_plane(image.data, args.image.name)
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    adapted = None
    if args.adapt:
        from ..learn.adapt import adapt_to_image

        adapted = adapt_to_image(data, pixel, args.material, dopant=args.dopant or None,
                                 beam_energy_keV=image.beam_energy_keV, optics=image.optics, base_model=args.model,
                                 runtime=args.runtime, device=args.device, name=args.image.name,
                                 progress=progress_printer(args.quiet),
                                 log=(lambda m: None) if args.quiet else print)
        seg = adapted.segmentation
    else:
        seg = segment_image(data, pixel, model=args.model, device=args.device, material=args.material,
                            beam_energy_keV=image.beam_energy_keV, optics=image.optics, runtime=args.runtime,
                            progress=progress_printer(args.quiet))
    with stage as staging:
        write_calibrated_tiff(staging / "labels.tif", seg.labels, pixel, title=LABELS_TITLE)
        seg.defects[DEFECTS_COLUMNS[:4]].to_csv(staging / "defects.csv", index=False)
        if adapted is not None:
            (staging / "adaptation.json").write_text(json.dumps(
                {"model": str(adapted.model), "adapted": adapted.adapted, "reused": adapted.reused,
                 "message": adapted.message, "taught": adapted.taught,
                 "model_vs_physics": {"before": adapted.agreement_before, "after": adapted.agreement_after},
                 "held_out": adapted.report.get("mean_f1")}, indent=2, default=str))
        if args.objects:
            from ..analysis.objects import defect_objects

            objects = defect_objects(seg.labels, pixel)
            objects.write(staging)
    out = Path(args.out)
    print(f"{len(seg.defects)} defects on {seg.device} ({seg.runtime}): " +
          ", ".join(f"{k} {v}" for k, v in seg.defects.defect_class.value_counts().items()))
    if args.objects:
        print("objects: " + ", ".join(f"{v} {k}" for k, v in objects.counts().items()))
    if adapted is not None:
        print(adapted.summary())
    for name in names:
        print(f"  wrote {out / name}")
    return 0


def _materials(text: str) -> list[str]:
    """``--materials`` as a list, spaces around the commas allowed (as the dock takes it)."""
    return [m.strip() for m in text.split(",") if m.strip()]


def _cmd_evaluate(args):
    from ..learn.evaluate import evaluate_model_on_twins

    from ..core.validation import parse_doses

    doses = parse_doses(args.doses)
    if args.classes:
        return _dose_response(args, doses)
    if args.out is not None or args.overwrite:
        raise ValueError("--out and --overwrite go with --classes (the dose-response files); without it evaluate "
                         "prints its tables and writes nothing")
    result = evaluate_model_on_twins(args.model, materials=_materials(args.materials), doses=doses, n_per=args.n,
                                     seed=args.seed, runtime=args.runtime,
                                     progress=progress_printer(args.quiet))
    for dose, table in result["by_dose"].items():
        print(f"\ndose {dose:g} e/Å²")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nall doses")
    print(result["overall"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _dose_response(args, doses) -> int:
    """``evaluate --classes``: F1 and IoU per grouping, class and dose, eqn. 1 fitted, files in --out."""
    from ..io.atomic import StagedOutput
    from ..learn.dose_response import DOSE_FILES, dose_response

    from ..core.validation import parse_class_groupings

    classes = parse_class_groupings(args.classes)
    if args.out is None:
        raise ValueError("--classes writes dose_response.csv, dose_fit.csv and dose_response.png: give --out DIR")
    if len(doses) < 3:
        raise ValueError(f"--classes fits a curve to F1 against dose: give at least three --doses, got {len(doses)}")
    stage = StagedOutput(args.out, DOSE_FILES, overwrite=args.overwrite)  # before any work
    response = dose_response(args.model, materials=_materials(args.materials), doses=doses, n_per=args.n,
                             seed=args.seed, classes=classes, runtime=args.runtime,
                             progress=progress_printer(args.quiet))
    with stage as staging:
        response.write(staging)
    print(response.points.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\ndose where the fitted F1 reaches 0.9 (eqn. 1; NaN: its plateau D0 stays below):")
    print(response.enough_dose().to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for name in DOSE_FILES:
        print(f"  wrote {Path(args.out) / name}")
    return 0


def _parse_region(text: str | None):
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(f"--region must be x0,y0,x1,y1 in Å, got {text[:60]!r}")
    return tuple(values)


def _cmd_uncertain(args):
    from ..inputs import image_plane, pixel_size_A
    from ..io.atomic import atomic_path, check_output_file
    from ..io.formats import load_images
    from ..learn.uncertainty import rank_uncertain_sites

    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out.name}: give a .csv file for the ranked sites")
    check_output_file(out, overwrite=args.overwrite, option="--out")  # before any work
    image = load_images(args.image)[0]
    pixel = pixel_size_A(image.scale_A, image.calibrated, args.image_pixel_size_A, args.image.name)
    if pixel is None:
        raise ValueError(f"{args.image} has no calibration: pass --pixel-size in Å")
    data, note = image_plane(image.data, args.image.name)
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    table = rank_uncertain_sites(data, pixel, model=args.model, device=args.device, runtime=args.runtime,
                                 progress=progress_printer(args.quiet))
    if args.top is not None:
        table = table.head(args.top)
    with atomic_path(out) as staging:
        table.to_csv(staging, index=False)
    print(f"{len(table)} sites ranked by the model's uncertainty (8 orientations)" +
          (f"; most uncertain: {table.uncertainty.iloc[0]:.2f} at x {table.x_A.iloc[0]:.1f} Å, "
           f"y {table.y_A.iloc[0]:.1f} Å" if len(table) else ""))
    print(f"  wrote {out}")
    return 0


def _cmd_finetune(args):
    import numpy as np

    from ..inputs import image_plane, pixel_size_A
    from ..io.formats import load_images
    from ..analysis.sites import microscope_for
    from ..core.parameters import DEFAULTS
    from ..learn.finetune import Correction, FinetuneConfig, file_sha256, finetune, read_corrections

    if len(args.labels) != len(args.images):
        raise ValueError(f"give one --labels table per image: {len(args.images)} images, {len(args.labels)} tables")
    config = FinetuneConfig(minutes=args.minutes, twins=args.twins, epochs=args.epochs, seed=args.seed,
                            device=args.device, keep_worse=bool(args.keep_worse))
    region = _parse_region(args.region)
    tables = [read_corrections(t, option="--labels") for t in args.labels]  # bad tables are refused before any image is read
    corrections, energies, optics_seen = [], set(), []
    for path, table, labels in zip(args.images, tables, args.labels):
        image = load_images(path)[0]
        pixel = pixel_size_A(image.scale_A, image.calibrated, args.image_pixel_size_A, path.name)
        if pixel is None:
            raise ValueError(f"{path} has no calibration: pass --pixel-size in Å")
        data, note = image_plane(image.data, path.name)
        if note and not args.quiet:
            print(f"note: {note}", file=sys.stderr)
        if image.beam_energy_keV:
            energies.add(float(image.beam_energy_keV))
        optics_seen.append(dict(image.optics or {}))
        corrections.append(Correction(np.asarray(data, float), float(pixel), table, region, name=path.name,
                                      sha256=file_sha256(path), labels_name=Path(labels).name))
    energy = args.energy if args.energy is not None else (energies.pop() if len(energies) == 1 else None)
    # the optics the files record (one set for all: the first image's), as analyze takes them: an ADF file is
    # modelled as ADF in the lattice fit and the twins
    optics = optics_seen[0] if optics_seen else {}
    microscope = microscope_for(energy if energy is not None else DEFAULTS["energy_keV"], optics)
    command = command_line()
    path, report = finetune(corrections, args.material, args.out, base_model=args.model, dopant=args.dopant,
                            config=config, microscope=microscope, optics=optics, command=command,
                            progress=progress_printer(args.quiet), log=(lambda m: None) if args.quiet else print,
                            overwrite=args.overwrite)
    before, after = report["mean_f1"]["before"], report["mean_f1"]["after"]
    print(f"held-out instance F1 (mean over classes): {before:.3f} before, {after:.3f} after fine-tuning")
    if not report["saved"]:
        print(f"the fine-tuned model was {report['why']}", file=sys.stderr)
        return 3
    if report["why"]:
        print(f"warning: the fine-tuned model was {report['why']}", file=sys.stderr)
    print(f"  wrote {path}\n  wrote {path.with_suffix('.json')}")
    return 0


def add_learn_commands(sub) -> None:
    p = sub.add_parser("dataset", help="generate a training dataset of digital twins (zarr, dask)")
    p.add_argument("--n", type=_t("n_samples"), required=True, help="number of images")
    p.add_argument("--out", type=Path, required=True, help="output .zarr folder")
    p.add_argument("--parents", default="MoS2,WSe2,MoTe2,WS2", help="comma-separated parents")
    p.add_argument("--presets", default="", help="comma-separated microscope presets (default: all)")
    p.add_argument("--size", type=_t("size_px"), default=256, help="image size in pixels")
    p.add_argument("--dose-min", type=_t("dose_min"), default=1e4, help="lowest dose in e/Å²")
    p.add_argument("--dose-max", type=_t("dose_max"), default=1e8, help="highest dose in e/Å²")
    p.add_argument("--pixel-size", type=_t("pixel_size_A"), nargs=2, metavar=("MIN", "MAX"),
                   help="pixel sizes drawn in Å (default 0.16 0.24)")
    p.add_argument("--source-size", type=_t("source_size_A"), nargs=2, metavar=("MIN", "MAX"),
                   help="Gaussian source sizes σ drawn in Å (default 0 0.4)")
    p.add_argument("--dopants", default="", help="metal-site dopants a TM_D may be, e.g. Ti,V,Cr,Nb,Re,Mo,W "
                   "(default: the parent's default dopant)")
    p.add_argument("--real-acquisition", action="store_true",
                   help="add scan flyback, stronger jitter and drift, and denoised inputs (Gaussian, SVD)")
    p.add_argument("--no-grain-boundaries", action="store_true",
                   help="no grain boundaries (each one's overlapping columns need an abTEM calibration of their own)")
    p.add_argument("--seed", type=_t("seed"), default=0)
    p.add_argument("--scheduler", help="address of a dask.distributed scheduler (default: a local cluster)")
    p.add_argument("--workers", type=_t("workers"), default=2, help="local worker processes")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset already in --out (other files there are kept)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_dataset)

    p = sub.add_parser("train", help="train a segmentation model on a dataset")
    p.add_argument("dataset", type=Path, nargs="+", help="one or more datasets (.zarr)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (.safetensors; card written beside)")
    p.add_argument("--architecture", default="light", help="unet, attention-unet, resnet152-unet or light")
    p.add_argument("--model-pixel-size", type=_t("model_pixel_size_A"), default=0.2, help="in Å")
    p.add_argument("--epochs", type=_t("epochs"), default=30)
    p.add_argument("--steps", type=_t("steps_per_epoch"), default=60, help="steps per epoch")
    p.add_argument("--batch-size", type=_t("batch_size"), default=16)
    p.add_argument("--crop", type=_t("crop_px"), default=128, help="training crop in px (a multiple of 32)")
    p.add_argument("--lr", type=_t("learning_rate"), default=2e-3)
    p.add_argument("--patience", type=_t("patience"), default=6)
    p.add_argument("--seed", type=_t("seed"), default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--init-from", type=Path, help="start from this .safetensors checkpoint (fine-tuning)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint and card at --out (refused without it)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a model on your own corrected defects (plus twins)")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="reviewed images")
    p.add_argument("--labels", type=Path, nargs="+", required=True, metavar="LABELS.csv",
                   help="one table per image: x_A,y_A,defect_class of every defect in the reviewed region")
    p.add_argument("--material", required=True, help="parent, e.g. WSe2 (the twins mixed in are of it)")
    p.add_argument("--dopant", help="dopant element the twins carry as TM_D (e.g. Ti)")
    p.add_argument("--region", help="reviewed region x0,y0,x1,y1 in Å (default: the image less a 2 Å border)")
    p.add_argument("--model", default="default", help="model to start from: 'default' or a .safetensors")
    p.add_argument("--out", type=Path, required=True, help="folder for model.safetensors and model.json")
    add_parameters(p, SEGMENT_PARAMETERS)
    p.add_argument("--energy", type=_t("energy_keV", "--energy"), help="beam energy of the twins in keV "
                   "(default: the images' recorded energy)")
    add_parameters(p, FINETUNE_PARAMETERS)
    p.add_argument("--seed", type=_t("seed"), default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace model.safetensors/model.json in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("uncertain",
                       help="rank an image's sites by the model's uncertainty (what to review first)")
    p.add_argument("image", type=Path)
    p.add_argument("--model", default="default", help="'default' or a .safetensors checkpoint with its card")
    p.add_argument("--out", type=Path, required=True,
                   help="CSV of the ranked sites (x_A, y_A, uncertainty, …)")
    p.add_argument("--top", type=_t("top"), help="keep only the N most uncertain sites")
    add_parameters(p, SEGMENT_PARAMETERS)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_runtime_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_uncertain)

    p = sub.add_parser("segment", help="find defects in an image with a trained model")
    p.add_argument("image", type=Path)
    p.add_argument("--model", default="default", help="'default' or a .safetensors checkpoint with its card")
    p.add_argument("--out", type=Path, required=True)
    add_parameters(p, SEGMENT_PARAMETERS)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_runtime_option(p)
    p.add_argument("--material", help="parent (e.g. MoSe2): checks each vacancy's sublattice against the lattice")
    add_parameters(p, ADAPT_PARAMETERS)
    p.add_argument("--objects", action="store_true",
                   help="also write each defect's and each cluster's contour and box: defect_objects.csv, "
                        "defect_objects.geojson")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("evaluate", help="per-instance F1 of a model on held-out digital twins")
    p.add_argument("--model", default="default")
    p.add_argument("--materials", default="MoSe2,WS2")
    p.add_argument("--doses", default="1e6")
    p.add_argument("--n", type=_t("n_per"), default=3, help="images per material and dose")
    p.add_argument("--seed", type=_t("seed"), default=10_000)
    p.add_argument("--classes", help="dose-response per class grouping: e.g. 1,3,all (1 binary, 3 by site, all "
                                     "classes); fits F1 = D0 + A·exp(−dose/α) and writes its table and plot to --out")
    p.add_argument("--out", type=Path, help="folder for --classes: dose_response.csv, dose_fit.csv, dose_response.png")
    p.add_argument("--overwrite", action="store_true")
    add_runtime_option(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_evaluate)
