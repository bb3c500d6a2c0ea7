"""Forecast evaluation (GUIDE section 8): origins, error grids and the report.

Origins: every (de-duplicated) reading t with a reading at t-5 min (+/-2.5) and
a target reading at t+h (+/-2.5). Every method is scored on the same origins,
always next to persistence and AR2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from forecasting.ml.baselines import LinearExtrapolation, Persistence, RidgeLagged, ar2_forecast
from forecasting.ml.data import Grid, SubjectReadings, build_grid, off_grid, origin_lattice
from forecasting.ml.datasets import Scaler, SeriesBank, WindowConfig

TOLERANCE_SECONDS = 150
DEFAULT_HORIZONS = (30, 60)
HYPO_THRESHOLD = 70.0
#: False alerts closer together than this (same subject) count as one alert.
ALERT_EPISODE_MINUTES = 30

# --------------------------------------------------------------------------
# Error grids
# --------------------------------------------------------------------------


def clarke_zones(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Clarke error grid zone per point (Clarke et al., Diabetes Care 1987).

    Boundaries follow the widely used formulation (A: within 20% or both <=70;
    E: opposite extremes; C: over-/under-correction bands; D: failure to detect).

    Args:
        ref: ``[N]`` reference mg/dL.  pred: ``[N]`` predicted mg/dL.
    Returns:
        ``[N]`` array of single-letter zones "A".."E".
    """
    r = np.asarray(ref, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    zone = np.full(r.shape, "B", dtype="<U1")
    a = ((r <= 70) & (p <= 70)) | ((p <= 1.2 * r) & (p >= 0.8 * r))
    e = ((r >= 180) & (p <= 70)) | ((r <= 70) & (p >= 180))
    c = ((r >= 70) & (r <= 290) & (p >= r + 110)) | ((r >= 130) & (r <= 180) & (p <= 7 / 5 * r - 182))
    d = (
        ((r >= 240) & (p >= 70) & (p <= 180))
        | ((r <= 175 / 3) & (p <= 180) & (p >= 70))
        | ((r >= 175 / 3) & (r <= 70) & (p >= 6 / 5 * r))
    )
    # Assign from least to most specific so the first matching rule wins.
    zone[d] = "D"
    zone[c] = "C"
    zone[e] = "E"
    zone[a] = "A"
    return zone


# Parkes (consensus) error grid for type 1 diabetes, mg/dL (Parkes et al.,
# Diabetes Care 2000; coordinates as tabulated by Pfutzner et al., JDST 2013).
# Each polygon is the region of that zone above/below the identity line.
_PARKES_T1: dict[str, list[tuple[float, float]]] = {
    "E_upp": [(0, 150), (35, 155), (50, 550), (0, 550)],
    "D_upp": [(0, 100), (25, 100), (50, 125), (80, 215), (125, 550), (50, 550), (35, 155), (0, 150)],
    "D_low": [(250, 0), (250, 40), (550, 150), (550, 0)],
    "C_upp": [
        (0, 60),
        (30, 60),
        (50, 80),
        (70, 110),
        (260, 550),
        (125, 550),
        (80, 215),
        (50, 125),
        (25, 100),
        (0, 100),
    ],
    "C_low": [(120, 0), (120, 30), (260, 130), (550, 250), (550, 150), (250, 40), (250, 0)],
    "B_upp": [
        (0, 50),
        (30, 50),
        (140, 170),
        (280, 380),
        (430, 550),
        (260, 550),
        (70, 110),
        (50, 80),
        (30, 60),
        (0, 60),
    ],
    "B_low": [(50, 0), (50, 30), (170, 145), (385, 300), (550, 450), (550, 250), (260, 130), (120, 30), (120, 0)],
}


def _inside(x: np.ndarray, y: np.ndarray, poly: list[tuple[float, float]]) -> np.ndarray:
    """Vectorised even-odd ray casting; boundary points may fall either way."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < x_at)
    return inside


def parkes_zones_type1(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Parkes type 1 zone per point ("A".."E"); values are clipped to 0..550."""
    x = np.clip(np.asarray(ref, dtype=np.float64), 0, 549.999)
    y = np.clip(np.asarray(pred, dtype=np.float64), 0, 549.999)
    zone = np.full(x.shape, "A", dtype="<U1")
    assigned = np.zeros(x.shape, dtype=bool)
    for name in ("E_upp", "D_upp", "D_low", "C_upp", "C_low", "B_upp", "B_low"):
        hit = _inside(x, y, _PARKES_T1[name]) & ~assigned
        zone[hit] = name[0]
        assigned |= hit
    return zone


# --------------------------------------------------------------------------
# Origins
# --------------------------------------------------------------------------


@dataclass
class Origins:
    """Evaluation origins of one subject.

    Attributes:
        index: ``[N]`` index of each origin reading in the subject's readings.
        slot: ``[N]`` grid slot of each origin reading.
        time: ``[N]`` int seconds.
        current: ``[N]`` mg/dL at t.  previous: ``[N]`` mg/dL at t-5.
        target: horizon minutes -> ``[N]`` mg/dL at t+h (NaN where absent).
    """

    index: np.ndarray
    slot: np.ndarray
    time: np.ndarray
    current: np.ndarray
    previous: np.ndarray
    target: dict[int, np.ndarray] = field(default_factory=dict)


def find_origins(readings: SubjectReadings, grid: Grid, horizons: tuple[int, ...] = DEFAULT_HORIZONS) -> Origins:
    """Origins per GUIDE section 8, over de-duplicated readings.

    A reading is an origin for horizon h when a reading exists at t-5 min
    (+/-2.5) and one at t+h (+/-2.5); the target is the reading nearest t+h.
    Origins are returned when at least one horizon has a target. Readings with
    the same time count once (the first); every other reading is an origin,
    including those that share a 5-minute slot (1- and 3-minute sensors).
    """
    times = readings.times
    distinct = np.ones(times.shape[0], dtype=bool)
    distinct[1:] = times[1:] != times[:-1]
    index = np.flatnonzero(distinct)
    t = times[index]
    g = readings.glucose[index]
    slots = grid.reading_slot[index]
    n = t.shape[0]
    if n == 0:
        empty = np.zeros(0)
        none = np.zeros(0, np.int64)
        return Origins(none, none, none, empty, empty, {h: empty for h in horizons})
    # Previous reading in [t-7.5, t-2.5] min: take the latest one not after t-2.5.
    j = np.searchsorted(t, t - TOLERANCE_SECONDS, side="right") - 1
    has_prev = (j >= 0) & (t[np.maximum(j, 0)] >= t - 3 * TOLERANCE_SECONDS) & (j < np.arange(n))
    prev = np.where(has_prev, g[np.maximum(j, 0)], np.nan)
    targets: dict[int, np.ndarray] = {}
    any_target = np.zeros(n, dtype=bool)
    for h in horizons:
        want = t + h * 60
        k = np.clip(np.searchsorted(t, want), 0, n - 1)
        km = np.clip(k - 1, 0, n - 1)
        best = np.where(np.abs(t[km] - want) <= np.abs(t[k] - want), km, k)
        ok = np.abs(t[best] - want) <= TOLERANCE_SECONDS
        targets[h] = np.where(ok & has_prev, g[best], np.nan)
        any_target |= ok & has_prev
    sel = any_target
    return Origins(
        index=index[sel],
        slot=slots[sel],
        time=t[sel],
        current=g[sel],
        previous=prev[sel],
        target={h: v[sel] for h, v in targets.items()},
    )


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def point_metrics(ref: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, MARD (%), Clarke zone shares (%) and A+B, Parkes type 1 A+B."""
    ok = ~np.isnan(ref) & ~np.isnan(pred)
    r, p = ref[ok], pred[ok]
    if r.size == 0:
        return {"n": 0}
    err = p - r
    zones = clarke_zones(r, p)
    pz = parkes_zones_type1(r, p)
    out: dict[str, float] = {
        "n": int(r.size),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "mard": float(np.mean(np.abs(err) / r) * 100),
    }
    for z in "ABCDE":
        out[f"clarke_{z}"] = float(np.mean(zones == z) * 100)
    out["clarke_AB"] = out["clarke_A"] + out["clarke_B"]
    out["parkes_AB"] = float(np.mean((pz == "A") | (pz == "B")) * 100)
    return out


def hypo_detection(
    ref: np.ndarray,
    pred: np.ndarray,
    subject: np.ndarray,
    time: np.ndarray,
    patient_days: float,
    threshold: float = HYPO_THRESHOLD,
) -> dict[str, float]:
    """Hypo (<70) detection: sensitivity, precision, false alerts per patient-day.

    A false alert is a predicted-low origin whose target was not low; false
    origins of one subject within ALERT_EPISODE_MINUTES of the previous counted
    one are merged, because a phone would show one alert, not one per reading.
    """
    ok = ~np.isnan(ref) & ~np.isnan(pred)
    r, p, s, t = ref[ok], pred[ok], subject[ok], time[ok]
    actual = r < threshold
    alarm = p < threshold
    tp = int((actual & alarm).sum())
    fn = int((actual & ~alarm).sum())
    fp_mask = alarm & ~actual
    episodes = 0
    for sid in np.unique(s[fp_mask]):
        ft = np.sort(t[fp_mask & (s == sid)])
        last = None
        for x in ft:
            if last is None or x - last > ALERT_EPISODE_MINUTES * 60:
                episodes += 1
                last = x
    return {
        "hypo_events": int(actual.sum()),
        "sensitivity": tp / (tp + fn) * 100 if tp + fn else float("nan"),
        "precision": tp / int(alarm.sum()) * 100 if alarm.any() else float("nan"),
        "false_alerts_per_day": episodes / patient_days if patient_days > 0 else float("nan"),
    }


def interval_coverage(ref: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    ok = ~np.isnan(ref)
    return float(np.mean((ref[ok] >= lower[ok]) & (ref[ok] <= upper[ok])) * 100) if ok.any() else float("nan")


# --------------------------------------------------------------------------
# Running methods on origins
# --------------------------------------------------------------------------

#: (bank, subject key, its readings, its grid, origin reading indices) -> ``[B, H, 3]`` mg/dL quantiles
#: p10/p50/p90, e.g. ``Forecaster.predict_origin_quantiles``.
QuantilePredictFn = Callable[[SeriesBank, str, SubjectReadings, Grid, np.ndarray], np.ndarray]
#: ``[B, H, 3]`` quantiles -> ``[B]`` bool: raise a predicted-low alert now.
AlertFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvaluationData:
    """Per-origin predictions of every method, concatenated over subjects."""

    horizons: tuple[int, ...]
    cohort: np.ndarray
    subject: np.ndarray
    time: np.ndarray
    target: dict[int, np.ndarray]
    point: dict[str, dict[int, np.ndarray]]
    interval: dict[int, tuple[np.ndarray, np.ndarray]]
    patient_days: dict[str, float]
    alarm: np.ndarray | None = None


def collect_predictions(
    subjects: dict[str, SubjectReadings],
    predict_fn: QuantilePredictFn | None = None,
    config: WindowConfig | None = None,
    scaler: Scaler | None = None,
    ridge: RidgeLagged | None = None,
    horizons: tuple[int, ...] = DEFAULT_HORIZONS,
    model_name: str = "model",
    alert_fn: AlertFn | None = None,
) -> EvaluationData:
    """Run baselines (and the model, when ``predict_fn`` is given) on all origins.

    ``alert_fn`` adds a "<model>_alert" row scoring the model's own alert rule
    (from its risk probabilities) for hypo detection at 30 min.
    """
    config = config or WindowConfig()
    scaler = scaler or Scaler()
    bank = SeriesBank(config, scaler)
    per_subject: list[tuple[str, SubjectReadings, Grid, Origins]] = []
    for key, readings in subjects.items():
        grid = build_grid(readings)
        if grid.n_slots == 0:
            continue
        bank.add(key, grid)
        per_subject.append((key, readings, grid, find_origins(readings, grid, horizons)))
    bank.finalize()
    steps = {h: h // 5 for h in horizons}
    H = max(steps.values())
    methods: list[tuple[str, object]] = [("persistence", Persistence()), ("linear", LinearExtrapolation())]
    if ridge is not None:
        methods.append(("ridge", ridge))
    cohort, subj, times = [], [], []
    target: dict[int, list[np.ndarray]] = {h: [] for h in horizons}
    point: dict[str, dict[int, list[np.ndarray]]] = {}
    interval: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {h: ([], []) for h in horizons}
    patient_days: dict[str, float] = {}
    alarms: list[np.ndarray] = []
    for key, readings, grid, org in per_subject:
        if org.slot.size == 0:
            continue
        gslots = bank.offsets[key] + org.slot
        L = config.context_steps
        ctx = bank.value[gslots[:, None] + np.arange(-L + 1, 1)[None, :]]
        # Origins off the grid see, like the model, a lattice ending at their own reading.
        off = off_grid(readings.times, grid, org.index)
        if off.any():
            ctx[off] = origin_lattice(readings, org.index[off], L).value
        # The context must end in the origin's own reading.
        ctx[:, -1] = org.current
        preds: dict[str, np.ndarray] = {
            "ar2": ar2_forecast(org.previous, org.current, H),
        }
        for name, m in methods:
            preds[name] = m.predict(ctx, H)  # type: ignore[attr-defined]
        if predict_fn is not None:
            q = predict_fn(bank, key, readings, grid, org.index)
            preds[model_name] = q[..., 1]
            if alert_fn is not None:
                alarms.append(alert_fn(q))
            for h in horizons:
                interval[h][0].append(q[:, steps[h] - 1, 0])
                interval[h][1].append(q[:, steps[h] - 1, 2])
        for name, pr in preds.items():
            for h in horizons:
                point.setdefault(name, {hh: [] for hh in horizons})[h].append(pr[:, steps[h] - 1])
        for h in horizons:
            target[h].append(org.target[h])
        cohort.append(np.full(org.slot.size, readings.cohort or "all", dtype=object))
        subj.append(np.full(org.slot.size, key, dtype=object))
        times.append(org.time)
        patient_days[key] = org.slot.size * 5 / 1440
    cat = np.concatenate
    return EvaluationData(
        horizons=horizons,
        cohort=cat(cohort) if cohort else np.zeros(0, dtype=object),
        subject=cat(subj) if subj else np.zeros(0, dtype=object),
        time=cat(times) if times else np.zeros(0, dtype=np.int64),
        target={h: cat(v) if v else np.zeros(0) for h, v in target.items()},
        point={m: {h: cat(v) for h, v in d.items()} for m, d in point.items()},
        interval={h: (cat(lo), cat(hi)) for h, (lo, hi) in interval.items() if lo},
        patient_days=patient_days,
        alarm=cat(alarms) if alarms else None,
    )


def summarise(
    data: EvaluationData, by_cohort: bool = True, subject_groups: dict[str, str] | None = None
) -> list[dict[str, object]]:
    """Metric rows: one per (group, horizon, method), plus an "all" group.

    Groups are the cohorts, or, when ``subject_groups`` maps subject keys to
    labels (age band, diabetes type), those labels.
    """
    groups: list[tuple[str, np.ndarray]] = [("all", np.ones(data.cohort.shape, dtype=bool))]
    labels = data.cohort
    if subject_groups is not None:
        labels = np.array([subject_groups.get(str(k), "unknown") for k in data.subject], dtype=object)
    if by_cohort:
        for c in sorted(set(labels.tolist())):
            groups.append((str(c), labels == c))
        if len(groups) == 2:
            groups = groups[:1]
    rows: list[dict[str, object]] = []
    for cname, sel in groups:
        days = sum(d for k, d in data.patient_days.items() if k in set(data.subject[sel].tolist()))
        for h in data.horizons:
            ref = data.target[h][sel]
            for method, by_h in data.point.items():
                pred = by_h[h][sel]
                row: dict[str, object] = {"cohort": cname, "horizon": h, "method": method}
                row.update(point_metrics(ref, pred))
                if h == 30:
                    row.update(hypo_detection(ref, pred, data.subject[sel], data.time[sel], days))
                if method not in ("persistence", "linear", "ar2", "ridge") and h in data.interval:
                    lo, hi = data.interval[h]
                    row["coverage80"] = interval_coverage(ref, lo[sel], hi[sel])
                rows.append(row)
            if h == 30 and data.alarm is not None:
                # The alert rule is scored like a point forecast: "low" <=> alarm.
                pseudo = np.where(data.alarm[sel], HYPO_THRESHOLD - 1, HYPO_THRESHOLD + 1)
                row = {"cohort": cname, "horizon": h, "method": "model_alert"}
                row.update(hypo_detection(ref, pseudo, data.subject[sel], data.time[sel], days))
                rows.append(row)
    return rows


def format_report(rows: list[dict[str, object]]) -> str:
    """Plain-text table of :func:`summarise` rows (markdown-compatible)."""
    cols = [
        ("cohort", "cohort", "{}"),
        ("horizon", "h", "{}"),
        ("method", "method", "{}"),
        ("n", "n", "{}"),
        ("rmse", "RMSE", "{:.1f}"),
        ("mae", "MAE", "{:.1f}"),
        ("mard", "MARD%", "{:.1f}"),
        ("clarke_A", "ClarkeA", "{:.1f}"),
        ("clarke_AB", "ClarkeA+B", "{:.2f}"),
        ("parkes_AB", "ParkesA+B", "{:.2f}"),
        ("sensitivity", "hypoSens", "{:.1f}"),
        ("precision", "hypoPrec", "{:.1f}"),
        ("false_alerts_per_day", "FA/day", "{:.2f}"),
        ("coverage80", "cov80", "{:.1f}"),
    ]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                cells.append("")
            else:
                cells.append(fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
