"""Timing table for the metrics: ``python -m glucoscope.metrics.bench``.

Synthetic 5-minute CGM (sinusoid + noise, a few gaps) for 14, 90 and 365 days; each cell is the
median of ``--repeat`` runs after one warm-up, in milliseconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from . import agp_profile, clean_series, compute_summary, conga, daily_profiles, lbgi_hbgi, mage, modd


def _series(days: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = days * 288
    k = np.arange(n)
    v = 140 + 50 * np.sin(k / 40.0) + 25 * np.sin(k / 7.0) + rng.normal(0, 8, n)
    keep = rng.random(n) > 0.03  # drop ~3 % of readings so the gap logic is exercised
    t = np.datetime64("2024-01-01T00:00", "s") + k * np.timedelta64(300, "s")
    return v.clip(40, 400)[keep], t[keep]


def _ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="glucoscope.metrics timing table")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rows = []
    for days in (14, 90, 365):
        v, t = _series(days)
        s = clean_series(v, t)
        cells = {
            "compute_summary": _ms(partial(compute_summary, v, t), args.repeat),
            "mage": _ms(partial(mage, s.values, s.t_abs), args.repeat),
            "conga1": _ms(partial(conga, s.values, s.t_abs), args.repeat),
            "modd": _ms(partial(modd, s.values, s.t_abs), args.repeat),
            "lbgi/hbgi": _ms(partial(lbgi_hbgi, s.values), args.repeat),
            "agp 15-min": _ms(partial(agp_profile, v, t), args.repeat),
            "daily": _ms(partial(daily_profiles, v, t), args.repeat),
        }
        rows.append((days, v.size, cells))
    names = list(rows[0][2])
    print(f"{'days':>5} {'readings':>9} " + " ".join(f"{n:>15}" for n in names) + "   (ms, median)")
    for days, n, cells in rows:
        print(f"{days:>5} {n:>9} " + " ".join(f"{cells[k]:>15.2f}" for k in names))


if __name__ == "__main__":
    main()
