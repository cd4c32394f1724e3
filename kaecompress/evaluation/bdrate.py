"""Bjøntegaard delta rate and PSNR between two rate–distortion curves, and a codec's rate at a given PSNR.

The integrals are the `bjontegaard` package's (FAU-LMS, BSD-3): log10 rate is interpolated over PSNR (BD-rate)
and PSNR over log10 rate (BD-PSNR), each averaged over the range the two curves share. The default
interpolation is piecewise cubic Hermite (PCHIP), the one of the JCT-VC / JVET common-test-conditions
spreadsheets; "cubic" is the single cubic least-squares fit of Bjøntegaard's VCEG-M33, "akima" Akima's spline.

Measured curves are first reduced to their efficient points (the Pareto front: each kept point has a higher
PSNR than every cheaper one), since the interpolations need PSNR rising with rate, and a setting that costs
more for less quality says nothing about what the codec can do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from kaecompress.errors import KaecError

METHODS = ("pchip", "cubic", "akima")
METHOD = "pchip"
MIN_POINTS = 4   # what the standard four-point comparison uses; a cubic through fewer points is not a fit
DESCRIPTION = {
    "pchip": "piecewise cubic Hermite interpolation (PCHIP) of log10 rate over PSNR, as in the JCT-VC/JVET "
             "common test conditions spreadsheets",
    "cubic": "cubic least-squares fit of log10 rate over PSNR, as in Bjøntegaard's VCEG-M33",
    "akima": "Akima interpolation of log10 rate over PSNR (Herglotz et al. 2022)",
}


def pareto(rates: Sequence[float], psnrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats (less or equal rate with higher or equal PSNR), by rising rate."""
    pts = sorted((float(r), float(p)) for r, p in zip(rates, psnrs) if math.isfinite(p) and r > 0)
    kept: list[tuple[float, float]] = []
    for r, p in pts:
        if kept and p <= kept[-1][1]:
            continue
        if kept and r == kept[-1][0]:
            kept.pop()
        kept.append((r, p))
    return np.array([r for r, _ in kept]), np.array([p for _, p in kept])


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    return lo, hi, (max(hi - lo, 0.0) / union if union > 0 else 0.0)


def bd(anchor_rates: Sequence[float], anchor_psnrs: Sequence[float], test_rates: Sequence[float],
       test_psnrs: Sequence[float], method: str = METHOD, min_points: int = MIN_POINTS) -> dict:
    """BD-rate (percent: negative means the test curve needs fewer bytes for the same PSNR) and BD-PSNR
    (dB: positive means the test curve gives more PSNR for the same bytes) of `test` against `anchor`.
    Either is None, with the reason in `note`, when the curves have too few efficient points or do not
    overlap."""
    if method not in METHODS:
        raise KaecError(f"BD interpolation: expected one of {', '.join(METHODS)}, got {method!r}")
    ra, pa = pareto(anchor_rates, anchor_psnrs)
    rt, pt = pareto(test_rates, test_psnrs)
    out = {"bd_rate": None, "bd_psnr": None, "method": method, "anchor_points": len(ra), "test_points": len(rt),
           "psnr_range": None, "psnr_overlap": 0.0, "note": None}
    short = [name for name, n in (("anchor", len(ra)), ("test", len(rt))) if n < min_points]
    if short:
        out["note"] = (f"{' and '.join(short)} curve{'s' if len(short) > 1 else ''} with fewer than {min_points} "
                       "efficient points: no BD figures")
        return out
    lo, hi, frac = _overlap(pa, pt)
    out["psnr_overlap"] = frac
    if hi > lo:
        out["psnr_range"] = [lo, hi]
    import bjontegaard

    with warnings.catch_warnings():
        # The package warns about small overlaps; the overlap is reported with the figures instead.
        warnings.simplefilter("ignore")
        if hi > lo:
            out["bd_rate"] = float(bjontegaard.bd_rate(ra, pa, rt, pt, method=method, require_matching_points=False,
                                                       min_overlap=0))
        if _overlap(np.log10(ra), np.log10(rt))[2] > 0:
            out["bd_psnr"] = float(bjontegaard.bd_psnr(ra, pa, rt, pt, method=method, require_matching_points=False,
                                                       min_overlap=0))
    notes = []
    if hi <= lo:
        notes.append(f"no common PSNR range (anchor {pa.min():.2f}-{pa.max():.2f} dB, test "
                     f"{pt.min():.2f}-{pt.max():.2f} dB)")
    elif frac < 0.75:
        notes.append(f"the curves share {frac:.0%} of their PSNR range ({lo:.2f}-{hi:.2f} dB)")
    if out["bd_psnr"] is None:
        notes.append(f"no common rate range (anchor {ra.min():.4g}-{ra.max():.4g}, test {rt.min():.4g}-"
                     f"{rt.max():.4g}): no BD-PSNR")
    out["note"] = "; ".join(notes) or None
    return out


def rate_at_psnr(rates: Sequence[float], psnrs: Sequence[float], psnr: float) -> dict:
    """What the curve (rates, psnrs) costs at `psnr`: log10 rate interpolated over PSNR (PCHIP) between its
    efficient points. Outside the curve's range it is not extrapolated: `rate` is None and `nearest` is the
    curve's end point on that side (below the lowest PSNR: the smallest rate the curve offers at all)."""
    r, p = pareto(rates, psnrs)
    out = {"rate": None, "nearest": None}
    if len(r) == 0:
        return out
    if psnr < p[0] or psnr > p[-1]:
        i = 0 if psnr < p[0] else -1
        out["nearest"] = {"rate": float(r[i]), "psnr": float(p[i])}
        return out
    if len(r) == 1:
        out["rate"] = float(r[0])
        return out
    from scipy.interpolate import PchipInterpolator

    out["rate"] = float(10 ** PchipInterpolator(p, np.log10(r))(psnr))
    return out
