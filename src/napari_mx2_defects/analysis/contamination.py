"""Contamination map: where amorphous material (carbon, hydrocarbons) lies on the layer.

In an incoherent HAADF image amorphous carbon adds intensity without order on top of the layer,
whose lattice stays visible underneath. So the map compares, window by window, the intensity that
has no lattice period with the lattice's own amplitude:

1. the *unordered* intensity is the local background (:func:`~.columns.local_background`: the
   floor between columns, which carbon lifts); the *lattice amplitude* is the RMS of the
   background-flattened image filtered to discs around the fitted lattice's reciprocal-lattice
   points (orders |h|, |k| ≤ 3; radius 12 % of the first order, wide enough for a drifting scan);
2. both are averaged over a Gaussian window (σ = :data:`WINDOW_A_UNITS` lattice constants); the
   score is log(unordered / amplitude), which a change of probe current or gain leaves alone; in a
   band of 2σ + a along the edges, where the filter rings, the nearest inner score is used;
3. the scores of windows one window apart are fitted with one and two Gaussians (scikit-learn):
   contamination is mapped only when BIC prefers two, they lie at least :data:`MIN_SEPARATION_LOG`
   apart and less than half of the windows lie above the midpoint of the two levels; then where the
   score passes that midpoint; specks and holes smaller than a window are dropped and filled.

The lower, commoner level is taken as clean, so more than half of the image must be clean.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["MIN_SEPARATION_LOG", "WINDOW_A_UNITS", "contamination_mask", "contamination_score"]

#: Gaussian window of the local powers, in lattice constants: long enough to average a few cells.
WINDOW_A_UNITS = 1.5
#: The contaminated windows' score must exceed the clean ones' by at least this (log 1.05: 5 % more unordered
#: intensity per unit of lattice amplitude; a clean twin's windows scatter by about 1 %).
MIN_SEPARATION_LOG = float(np.log(1.05))


def _lattice_filter(flat: np.ndarray, a1_px: np.ndarray, a2_px: np.ndarray, orders: int = 3,
                    radius_fraction: float = 0.12) -> np.ndarray:
    ny, nx = flat.shape
    spectrum = np.fft.fft2(flat)
    fy = np.fft.fftfreq(ny)[:, None]
    fx = np.fft.fftfreq(nx)[None, :]
    reciprocal = np.linalg.inv(np.column_stack([a1_px, a2_px])).T  # columns b1, b2 in cycles/px (x, y)
    radius = radius_fraction * float(np.linalg.norm(reciprocal[:, 0]))
    keep = np.zeros((ny, nx), bool)
    for h in range(-orders, orders + 1):
        for k in range(-orders, orders + 1):
            if h == 0 and k == 0:
                continue
            gx, gy = h * reciprocal[:, 0] + k * reciprocal[:, 1]
            if abs(gx) > 0.5 or abs(gy) > 0.5:
                continue
            keep |= (fx - gx) ** 2 + (fy - gy) ** 2 <= radius**2
    return np.fft.ifft2(spectrum * keep).real


def contamination_score(image: np.ndarray, a1_px, a2_px, a_px: float) -> np.ndarray:
    """log(unordered intensity / lattice amplitude) per pixel, over a Gaussian window of WINDOW_A_UNITS · a."""
    from .columns import local_background, real_image

    img = real_image(image)
    background = local_background(img, a_px)
    lattice = _lattice_filter(img - background, np.asarray(a1_px, float), np.asarray(a2_px, float))
    sigma = WINDOW_A_UNITS * a_px
    amplitude = np.sqrt(ndimage.gaussian_filter(lattice**2, sigma, mode="reflect"))
    unordered = ndimage.gaussian_filter(background, sigma, mode="reflect")
    tiny = 1e-9 * float(np.mean(np.abs(img)) + 1e-30)
    score = np.log((np.clip(unordered, 0, None) + tiny) / (amplitude + tiny))
    # near the edges the Fourier filter rings (an image is not periodic) and the windows run out of
    # image: the band takes the score of the nearest pixel inside it
    band = int(np.ceil(2 * sigma + a_px))
    if min(score.shape) > 4 * band:
        outside = np.ones(score.shape, bool)
        outside[band:-band, band:-band] = False
        _, (rows, cols) = ndimage.distance_transform_edt(outside, return_indices=True)
        score = score[rows, cols]
    return score


def contamination_mask(image: np.ndarray, a1_px, a2_px, a_px: float) -> tuple[np.ndarray, dict]:
    """Boolean map of contaminated pixels, and what was measured (the two levels, threshold, fraction).

    The scores of windows one window apart (nearly independent samples) are fitted with one and with
    two Gaussians (scikit-learn); contamination is reported only when BIC prefers two, the upper
    component is at least :data:`MIN_SEPARATION_LOG` above the lower and less than half of the windows
    lie above the midpoint of the two levels, and then where a pixel's score is above that midpoint.
    """
    from sklearn.mixture import GaussianMixture

    score = contamination_score(image, a1_px, a2_px, a_px)
    window_px = WINDOW_A_UNITS * a_px
    margin = int(np.ceil(window_px))
    step = max(1, int(window_px))
    core = score[margin:-margin or None:step, margin:-margin or None:step] if min(score.shape) > 4 * margin \
        else score[::step, ::step]
    values = core.reshape(-1, 1)
    record = {"window_A_units": WINDOW_A_UNITS, "score_clean_level": float(np.median(values)), "fraction": 0.0}
    mask = np.zeros(score.shape, bool)
    if len(values) < 20:
        record["note"] = "too few windows to map contamination"
        return mask, record
    one = GaussianMixture(1, random_state=0).fit(values)
    two = GaussianMixture(2, random_state=0, n_init=3).fit(values)
    low, high = np.argsort(two.means_.ravel())
    separation = float(two.means_[high, 0] - two.means_[low, 0])
    # the midpoint between the two levels: a blurred edge crosses it where the patch ends (a posterior
    # threshold would move with the two components' widths)
    threshold = 0.5 * float(two.means_[low, 0] + two.means_[high, 0])
    # "more than half is clean" is judged on the windows above the threshold, not on the upper component's
    # weight: the windows across a patch's blurred edge lie between the levels and the upper component
    # takes them, so its weight sits near one half at 30 % cover (0.44-0.50 over four 1e6 e/Å² twins) and
    # a gate on it flipped the whole map on a rounding
    above = float(np.mean(values[:, 0] > threshold))
    record.update({"bic_one": float(one.bic(values)), "bic_two": float(two.bic(values)),
                   "separation_log": separation, "weight_contaminated": float(two.weights_[high]),
                   "windows_above_threshold": above})
    if not (two.bic(values) < one.bic(values) and separation >= MIN_SEPARATION_LOG and above < 0.5):
        return mask, record
    record["score_clean_level"] = float(two.means_[low, 0])
    record["score_contaminated_level"] = float(two.means_[high, 0])
    record["score_threshold"] = threshold
    mask = score > threshold
    smallest = np.pi * window_px**2  # specks and holes under one window's area are noise
    for value in (True, False):  # drop small contaminated specks, then fill small clean holes
        labels, n = ndimage.label(mask == value)
        if n:
            sizes = ndimage.sum(mask == value, labels, index=np.arange(1, n + 1))
            mask[np.isin(labels, np.flatnonzero(sizes < smallest) + 1)] = not value
    record["fraction"] = float(mask.mean())
    return mask, record
