"""Timing benchmark for glucotype stratification: ``python -m forecasting.stratification_bench``.

Scenario: 10,000 synthetic patients x 14 days of 5-minute CGM (4,032 readings each) cut into
2.5-hour windows (30 points, ~1.34 M windows). Steps timed separately:

* windows: per-patient :func:`make_windows` from (values, epoch timestamps), the path real data
  takes (synthetic generation itself is not timed);
* fit: k-means on a random subsample of windows (``max_fit_windows``);
* assign: predict every window and reduce to per-patient dominant class and shares.

DTW is timed on a subsample of patients and extrapolated linearly to 10,000 (assignment cost is
linear in the number of windows; the fit uses a fixed-size subsample), and says so in the table.
Use ``--patients`` / ``--dtw-patients`` to change sizes.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from forecasting.stratification import (
    GlucotypeClassifier,
    make_windows,
    synthetic_patients,
)
from glucoscope.metrics import parse_sensor_values

CHUNK = 500


def _cohort(n_patients: int, days: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (values, kind) chunks so 10k x 4032 floats never sit in memory at once."""
    for start in range(0, n_patients, CHUNK):
        n = min(CHUNK, n_patients - start)
        yield synthetic_patients(n, days=days, seed=seed + start)


def _windows(n_patients: int, days: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    t0_epoch = 1_700_000_000.0
    all_w: list[np.ndarray] = []
    pids: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    elapsed = 0.0
    pid = 0
    for x, kind in _cohort(n_patients, days, seed):
        ts = t0_epoch + np.arange(x.shape[1]) * 300.0
        t = time.perf_counter()
        for row in x:
            w = make_windows(row, ts)
            all_w.append(w)
            pids.append(np.full(w.shape[0], pid, dtype=np.int64))
            pid += 1
        elapsed += time.perf_counter() - t
        kinds.append(kind)
    return np.concatenate(all_w), np.concatenate(pids), np.concatenate(kinds), elapsed


def _run(metric: str, n_patients: int, days: int, seed: int, **kw: int) -> dict[str, float]:
    w, pid, kind, t_win = _windows(n_patients, days, seed)
    est = GlucotypeClassifier(metric=metric, random_state=seed, **kw)  # type: ignore[arg-type]
    t = time.perf_counter()
    est.fit(w)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    labels = est.predict(w)
    dom, _, _ = est.shares_from_labels(labels, pid, n_patients)
    t_assign = time.perf_counter() - t
    # Agreement of dominant class with the synthetic latent kind (0/1/2).
    agree = float((dom == kind).mean())
    return {
        "windows": float(w.shape[0]),
        "t_win": t_win,
        "t_fit": t_fit,
        "t_assign": t_assign,
        "agree": agree,
    }


HALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cgm"


def hall_crosstab(data_dir: Path = HALL, seed: int = 0) -> None:
    """Fit on Hall et al. 2018 CGM windows and cross-tabulate glucotype against diagnosis."""
    data = data_dir / "Hall_2018.csv.gz"
    meta = data_dir / "Hall_2018-metadata.csv"
    if not data.exists() or not meta.exists():
        print(f"Hall_2018 check skipped: {data} not found")
        return
    diagnosis = {r["person_id"]: r["diabetes_type"] or "unknown" for r in csv.DictReader(meta.open())}
    series: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    with gzip.open(data, "rt") as fh:
        for r in csv.DictReader(fh):
            v, t = series[r["subject_id"]]
            v.append(r["glucose_mg_dl"])  # the export contains "Low"/"High" sensor flags
            t.append(r["timestamp"])
    ids = sorted(series)
    windows = [
        make_windows(parse_sensor_values(series[i][0]), np.asarray(series[i][1], dtype="datetime64[s]")) for i in ids
    ]
    est = GlucotypeClassifier(random_state=seed).fit(np.concatenate(windows))
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    severe_share: dict[str, list[float]] = defaultdict(list)
    for pid, w in zip(ids, windows, strict=True):
        res = est.classify_windows(w)
        dx = diagnosis.get(pid, "unknown")
        table[dx][res.glucotype or "none"] += 1
        severe_share[dx].append(res.shares.get("severe", 0.0))
    cols = [*est.class_names_, "none"]
    print(f"\nHall_2018: {len(ids)} subjects, {sum(len(w) for w in windows)} windows of 2.5 h")
    print(
        "class mean within-window SD (mg/dL):",
        ", ".join(f"{n} {v:.1f}" for n, v in zip(est.class_names_, est.class_mean_sd_, strict=True)),
    )
    print(f"{'diagnosis':14}" + "".join(f"{c:>10}" for c in cols) + f"{'mean % severe':>15}")
    for dx in sorted(table):
        row = table[dx]
        print(f"{dx:14}" + "".join(f"{row.get(c, 0):>10d}" for c in cols) + f"{100 * np.mean(severe_share[dx]):>15.1f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--dtw-patients", type=int, default=500, help="0 skips DTW")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hall-only", action="store_true", help="only the Hall_2018 diagnosis cross-tab")
    args = ap.parse_args(argv)
    if args.hall_only:
        hall_crosstab(seed=args.seed)
        return

    rows: list[tuple[str, int, dict[str, float], float]] = []
    eu = _run("euclidean", args.patients, args.days, args.seed)
    rows.append(("euclidean/sorted (default)", args.patients, eu, 1.0))
    if args.dtw_patients > 0:
        dtw = _run(
            "dtw",
            args.dtw_patients,
            args.days,
            args.seed,
            max_fit_windows=2000,
            max_iter=10,
            n_init=1,
        )
        rows.append(
            (
                "dtw/sorted, band r=2, 30->10 pts",
                args.dtw_patients,
                dtw,
                args.patients / args.dtw_patients,
            )
        )

    print(f"Glucotype stratification benchmark: {args.patients} patients x {args.days} days, 5-min, 2.5-h windows")
    hdr = f"{'method':34} {'measured on':>11} {'windows':>10} {'windows s':>9} {'fit s':>7} {'assign s':>8} {'total s':>8} {'total @N s':>10} {'agree':>6}"
    print(hdr)
    print("-" * len(hdr))
    for name, n, r, scale in rows:
        total = r["t_win"] + r["t_fit"] + r["t_assign"]
        # Fit is on a fixed-size subsample, so only windows+assign scale with patient count.
        at_n = r["t_fit"] + (r["t_win"] + r["t_assign"]) * scale
        note = "" if scale == 1.0 else " (extrapolated)"
        print(
            f"{name:34} {n:>11d} {int(r['windows']):>10d} {r['t_win']:>9.2f} {r['t_fit']:>7.2f} "
            f"{r['t_assign']:>8.2f} {total:>8.2f} {at_n:>10.1f} {r['agree']:>6.2f}{note}"
        )
    print("agree = share of patients whose dominant class equals the synthetic latent kind")
    hall_crosstab(seed=args.seed)


if __name__ == "__main__":
    main()
