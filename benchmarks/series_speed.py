"""Speed and accuracy of ``mx2-defects series`` on the issue's series (issue 31: a 16 × 512² series ≤ 2 min on
2 cores; X_loss within 15 % of the realised value with its 95 % interval holding the truth; the last frame's
missing S within 10 %).

The series twin — 16 frames of a 102.4 Å (512²) MoS2 field at 0.2 Å/px, 1e5 e/Å² per frame, S lost at
12 barn, drifting (0.32, 0.24) Å per frame — is simulated (``simulate --frames``) and saved as a TIFF stack,
then ``mx2-defects series`` runs on it in a fresh process, timed end to end as a user meets it (start-up,
reading, model loading, every frame, writing). Each seed is one run. Run:

    python benchmarks/series_speed.py [--seeds 3,4] [--threads 2]

and copy the table into benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIGMA_X_BARN = 12.0
DOSE = 1e5


def _simulate(seed: int, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_mx2_defects.cli", "simulate", "--material", "MoS2", "--fov",
                    "102.4", "--pixel-size", "0.2", "--dose", f"{DOSE:g}", "--frames", "16", "--damage",
                    f"X_loss={SIGMA_X_BARN:g}", "--frame-drift", "0.32", "0.24", "--seed", str(seed), "--out",
                    str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _score(twin_dir: Path, series_dir: Path) -> dict:
    """The measured X_loss and last-frame missing S; the truth over the twin's field inside every frame (its
    ``truth_cross_section.csv`` and ``truth_frames.csv``; the analysis tracks nearly the same sites)."""
    import pandas as pd

    measured = pd.read_csv(series_dir / "cross_section.csv").set_index("process").loc["X_loss"]
    frames = pd.read_csv(series_dir / "frames.csv")
    realised = pd.read_csv(twin_dir / "truth_cross_section.csv").set_index("process").loc["X_loss"]
    truth_frames = pd.read_csv(twin_dir / "truth_frames.csv")
    return {"sigma_barn": round(float(measured.sigma_barn), 3), "ci_low_barn": round(float(measured.ci_low_barn), 3),
            "ci_high_barn": round(float(measured.ci_high_barn), 3), "n_events": int(measured.n_events),
            "n_at_risk": int(measured.n_at_risk), "realised_sigma_barn": round(float(realised.realised_sigma_barn), 3),
            "realised_n_events": int(realised.n_events), "realised_n_at_risk": int(realised.n_at_risk),
            "missing_X_last": int(frames.missing_X.iloc[-1]),
            "missing_X_last_true": int(truth_frames.missing_X_common.iloc[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="3,4")
    parser.add_argument("--threads", type=int, default=0, help="limit BLAS/OpenMP threads (0: the machine's)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MX2_DEFECTS_THREADS"):
            env[key] = str(args.threads)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version()}))
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            twin, out = Path(tmp) / "twin", Path(tmp) / "series"
            simulate_s = _simulate(seed, twin)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "napari_mx2_defects.cli", "series", str(twin / "image.tif"),
                                   "--material", "MoS2", "--dose-per-frame", f"{DOSE:g}", "--out", str(out),
                                   "--quiet"], env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(proc.stderr)
            row = {"seed": seed, "frames": 16, "shape": [512, 512], "series_seconds": round(seconds, 1),
                   "simulate_seconds": round(simulate_s, 1), **_score(twin, out)}
            settings = json.loads((out / "series.json").read_text())
            row["analysis_seconds_in_process"] = settings["seconds"]
            rows.append(row)
            print(json.dumps(row))
    worst = max(r["series_seconds"] for r in rows)
    print(json.dumps({"worst_series_seconds": worst, "target_seconds": 120, "met": worst <= 120}))


if __name__ == "__main__":
    main()
