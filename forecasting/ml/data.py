"""Reading CGM files and putting readings on a causal 5-minute grid.

Pure numpy/pandas; no Django. The shared CSV format is
``subject_id,timestamp,glucose_mg_dl`` (optionally gzipped, local time with no
offset) with optional ``carbs_g`` and ``insulin_u`` columns.

The grid is built so that the value of a slot never depends on a reading that
came later than the slot's own reading: duplicates keep the *first* reading and
short gaps are interpolated only between two readings that both lie inside the
window being used (see :func:`build_grid`).
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

GRID_MINUTES = 5
GRID_SECONDS = GRID_MINUTES * 60
#: Sensor floor/ceiling: "Low"/"High" readings are clamped here and flagged.
LOW_LIMIT_MG_DL = 40.0
HIGH_LIMIT_MG_DL = 400.0
#: Gaps up to this long (between two real readings) are linearly interpolated;
#: longer gaps stay masked because inventing long stretches hides real events.
MAX_INTERPOLATED_GAP_MINUTES = 15
#: A gap longer than this starts a new grid segment with a fresh anchor, which
#: stops slow clock drift from accumulating across sensor sessions.
SEGMENT_BREAK_MINUTES = 30
#: Longest run of empty slots kept between segments; anything longer is
#: irrelevant to a 6 h context and would only waste memory.
MAX_EMPTY_SLOTS = 120
#: Empty slots between two subjects of one batch grid (``build_grid(subject_starts=...)``): the batch path
#: masks every window slot before a subject's first reading, so only the last-hour check (12 slots,
#: ``datasets.sufficient_history``) needs distance, and MAX_EMPTY_SLOTS would leave most slots empty.
SUBJECT_GAP_SLOTS = 12

FLAG_NONE = 0
FLAG_LOW = 1  # parse_glucose relies on these two values (bit 0 and bit 1)
FLAG_HIGH = 2

TYPE1_COHORTS = ("AZT1D", "Bris-T1D_Open", "T1D-UOM")
# Non-diabetic, prediabetes and type 2 cohorts. Trained on next to the type 1 cohorts because a model that has
# only seen type 1 glucose expects every trace to drift up towards type 1 levels: on these people the
# type-1-only v1.2.0 was worse than AR2 at 60 min (Colas_2019: 19.8 against 17.4 mg/dL RMSE).
SPECTRUM_COHORTS = ("BIGIDEAs", "Colas_2019", "Hall_2018")
TRAINING_COHORTS = TYPE1_COHORTS + SPECTRUM_COHORTS

_LOW_WORDS = {"low", "lo", "l"}
_HIGH_WORDS = {"high", "hi", "h"}


@dataclass
class SubjectReadings:
    """All readings of one subject, sorted by time.

    Attributes:
        subject_id: identifier as written in the input.
        times: shape ``[N]`` int64, seconds since the epoch of the naive local time.
        glucose: shape ``[N]`` float64 mg/dL, clamped to 40..400.
        flags: shape ``[N]`` int8, FLAG_LOW / FLAG_HIGH where clamped.
        carbs: shape ``[N]`` float64 grams (0 where absent) or None.
        insulin: shape ``[N]`` float64 units (0 where absent) or None.
        raw_timestamps: shape ``[N]`` object, the timestamp text as written.
    """

    subject_id: str
    times: np.ndarray
    glucose: np.ndarray
    flags: np.ndarray
    carbs: np.ndarray | None = None
    insulin: np.ndarray | None = None
    raw_timestamps: np.ndarray | None = None
    cohort: str = ""
    #: The subject's row of ``<cohort>-metadata.csv`` (age, diabetes type, ...), if any.
    info: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.times.shape[0])


@dataclass
class Grid:
    """One subject's readings on a 5-minute grid.

    Attributes:
        reading_slot: shape ``[N]`` int64, the slot of every input reading
            (duplicates share a slot).
        reading_kept: shape ``[N]`` bool, True for the reading that defines its slot.
        value: shape ``[S]`` float64 mg/dL, NaN where nothing is known;
            interpolated inside short gaps.
        observed: shape ``[S]`` bool, a real reading sits in this slot.
        interpolated: shape ``[S]`` bool, value was filled from a short gap.
        slot_time: shape ``[S]`` int64 seconds, nominal time of each slot.
        carbs / insulin: shape ``[S]`` float64 (zeros when the channel is absent).
        has_treatments: whether carbs or insulin were supplied at all.
    """

    reading_slot: np.ndarray
    reading_kept: np.ndarray
    value: np.ndarray
    observed: np.ndarray
    interpolated: np.ndarray
    slot_time: np.ndarray
    carbs: np.ndarray
    insulin: np.ndarray
    has_treatments: bool = False
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def n_slots(self) -> int:
        return int(self.value.shape[0])


def parse_glucose(values: np.ndarray | list[object]) -> tuple[np.ndarray, np.ndarray]:
    """Turn raw glucose cells into mg/dL and sensor flags.

    "Low"/"High" words and numbers outside 40..400 are clamped and flagged, as the
    sensors themselves do; unparseable cells become NaN (dropped later).

    Returns:
        (glucose ``[N]`` float64, flags ``[N]`` int8)
    """
    try:
        # Fast path (the worker's case: plain numbers): no pandas objects per patient.
        numeric = np.array(values, dtype=np.float64)
        raw = None
    except (TypeError, ValueError):
        raw = pd.Series(np.asarray(values, dtype=object))
        numeric = np.array(pd.to_numeric(raw, errors="coerce"), dtype=np.float64)
    word_flags = None
    if raw is not None:
        nan = np.isnan(numeric)
        if nan.any():
            word_flags = np.zeros(numeric.shape[0], dtype=np.int8)
            words = raw[nan].astype(str).str.strip().str.lower()
            low = words.isin(_LOW_WORDS).to_numpy()
            high = words.isin(_HIGH_WORDS).to_numpy()
            idx = np.flatnonzero(nan)
            numeric[idx[low]] = LOW_LIMIT_MG_DL
            numeric[idx[high]] = HIGH_LIMIT_MG_DL
            word_flags[idx[low]] = FLAG_LOW
            word_flags[idx[high]] = FLAG_HIGH
    below = numeric < LOW_LIMIT_MG_DL
    above = numeric > HIGH_LIMIT_MG_DL
    # Bools as int8 are 0/1, so this is FLAG_LOW where below and FLAG_HIGH where above, in three passes
    # over bytes instead of two boolean-mask assignments. A word's limit value is neither below nor above.
    flags = below.view(np.int8) | (above.view(np.int8) << 1)
    if word_flags is not None:
        flags |= word_flags
    # The same as choosing the limit where below/above (NaN stays NaN), without the selections.
    numeric = np.minimum(np.maximum(numeric, LOW_LIMIT_MG_DL), HIGH_LIMIT_MG_DL)
    return numeric, flags


def parse_timestamps(values: pd.Series) -> np.ndarray:
    """Parse timestamp text into int64 seconds (naive local time kept as is).

    Offsets, where present, are converted to UTC; the shared files have none.
    Unparseable cells become the minimum int64 sentinel and are dropped later.
    """
    parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    out = parsed.to_numpy(dtype="datetime64[s]").astype(np.int64)
    return out


_TIME_OF_DAY = r"^\s*(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d*)?)?\s*$"
#: A time of day more than this far below the previous row's starts the next day.
_ROLLOVER_SECONDS = 12 * 3600


#: The longest bare time of day ("HH:MM:SS.ffffff"); any date-time is longer.
_TIME_OF_DAY_MAX_CHARS = 15


def _with_days_for_bare_times(text: pd.Series, subjects: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``times`` with rows whose timestamp is a bare time of day ("00:05:14") given a day.

    Some harmonised cohorts (Colas_2019) write only the time of day, two or more days per subject in
    file order. Parsed as dates they would all fall on one day, and sorting would interleave the days.
    Instead, day 0 is 1970-01-01 and each subject moves to the next day when, in file order, the time
    falls back by more than 12 hours (23:55 then 00:00); a smaller step back is an out-of-order row of
    the same day.
    """
    # Only short cells can be bare times: the regular expression then runs on those alone, not on every
    # row of a large file (it doubled the read time of Bris-T1D_Open).
    short = np.flatnonzero(text.str.len().to_numpy() <= _TIME_OF_DAY_MAX_CHARS)
    if short.size == 0:
        return times
    parts = text.iloc[short].str.extract(_TIME_OF_DAY)
    is_bare = parts[0].notna().to_numpy()
    if not is_bare.any():
        return times
    bare = short[is_bare]
    rows = parts[is_bare].astype(float).fillna(0.0)
    second_of_day = (rows[0] * 3600 + rows[1] * 60 + rows[2]).to_numpy().astype(np.int64)
    subject = subjects[bare]
    step = pd.Series(second_of_day).groupby(subject).diff().to_numpy()
    day = pd.Series((step < -_ROLLOVER_SECONDS).astype(np.int64)).groupby(subject).cumsum().to_numpy()
    out = times.copy()
    out[bare] = np.where(second_of_day < 86400, day * 86400 + second_of_day, np.iinfo(np.int64).min)
    return out


#: Readings that must be in the window before a basal floor is estimated (3 hours of 5-minute readings).
_BASAL_MIN_READINGS = 36


def without_basal_floor(times: np.ndarray, insulin: np.ndarray) -> np.ndarray:
    """Bolus insulin from an insulin column that may also hold basal delivery (U per reading).

    The model reads boluses: the shared format's ``insulin_u`` is "bolus insulin delivered up to each
    reading", and the simulated cohort it learned from has exactly that. A pump export or a simulator's
    total insulin also carries basal, a steady floor under every reading, which the model would read as
    a bolus every 5 minutes (on simulated patients that took RMSE from 0.78 to 0.86 x AR2 at 30 min).
    The floor is the median over the past 24 hours (causal); boluses are rare enough that it is 0 for
    bolus-only data, which therefore passes unchanged. Needs 3 hours of readings before it subtracts.
    """
    if insulin.size == 0:
        return insulin
    index = pd.to_datetime(times, unit="s")
    floor = pd.Series(insulin, index=index).rolling("24h", min_periods=_BASAL_MIN_READINGS).median()
    return np.maximum(insulin - np.nan_to_num(floor.to_numpy()), 0.0)


def frame_to_subjects(frame: pd.DataFrame, cohort: str = "") -> dict[str, SubjectReadings]:
    """Split a readings frame into per-subject, time-sorted :class:`SubjectReadings`.

    The sort is stable so that, among readings with the same timestamp, the one
    written first in the file wins later de-duplication.
    """
    required = {"subject_id", "timestamp", "glucose_mg_dl"}
    missing = required - set(frame.columns)
    if missing:
        raise ValueError(f"CSV is missing columns: {sorted(missing)}")
    timestamp_text = frame["timestamp"].astype(str)
    raw_ts = timestamp_text.to_numpy(dtype=object)
    subjects = frame["subject_id"].astype(str).to_numpy(dtype=object)
    times = _with_days_for_bare_times(timestamp_text, subjects, parse_timestamps(timestamp_text))
    glucose, flags = parse_glucose(frame["glucose_mg_dl"].to_numpy(dtype=object))
    has_carbs = "carbs_g" in frame.columns
    has_insulin = "insulin_u" in frame.columns
    carbs = np.nan_to_num(pd.to_numeric(frame["carbs_g"], errors="coerce").to_numpy(np.float64)) if has_carbs else None
    insulin = (
        np.nan_to_num(pd.to_numeric(frame["insulin_u"], errors="coerce").to_numpy(np.float64)) if has_insulin else None
    )
    valid = (times != np.iinfo(np.int64).min) & ~np.isnan(glucose)
    out: dict[str, SubjectReadings] = {}
    idx_all = np.flatnonzero(valid)
    if idx_all.size == 0:
        return out
    codes, _uniques = pd.factorize(subjects[idx_all], sort=False)
    order = np.lexsort((times[idx_all], codes))
    idx_sorted = idx_all[order]
    codes_sorted = codes[order]
    bounds = np.flatnonzero(np.diff(codes_sorted)) + 1
    for chunk in np.split(idx_sorted, bounds):
        sid = str(subjects[chunk[0]])
        out[sid] = SubjectReadings(
            subject_id=sid,
            times=times[chunk],
            glucose=glucose[chunk],
            flags=flags[chunk],
            carbs=carbs[chunk] if carbs is not None else None,
            insulin=without_basal_floor(times[chunk], insulin[chunk]) if insulin is not None else None,
            raw_timestamps=raw_ts[chunk],
            cohort=cohort,
        )
    return out


def read_cgm_csv(path: str | Path, cohort: str | None = None) -> dict[str, SubjectReadings]:
    """Read a (gzipped) CGM CSV into per-subject readings.

    Args:
        path: ``.csv`` or ``.csv.gz`` with ``subject_id,timestamp,glucose_mg_dl``
            and optionally ``carbs_g,insulin_u``.
        cohort: label stored on every subject (defaults to the file stem).
    """
    path = Path(path)
    if cohort is None:
        cohort = path.name.split(".")[0]
    frame = pd.read_csv(path, dtype={"subject_id": str, "timestamp": str, "glucose_mg_dl": str})
    return frame_to_subjects(frame, cohort=cohort)


def read_metadata(path: str | Path) -> dict[str, dict[str, str]]:
    """Read a ``<cohort>-metadata.csv`` into ``{person_id: row}``.

    Uses the csv module because some cells contain quoted commas.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:  # type: ignore[operator]
        reader = csv.DictReader(fh)
        return {row["person_id"]: dict(row) for row in reader if row.get("person_id")}


def load_cohorts(data_dir: str | Path, cohorts: tuple[str, ...] = TYPE1_COHORTS) -> dict[str, SubjectReadings]:
    """Load several shared cohorts; keys are ``"<cohort>/<subject_id>"``.

    Raises:
        FileNotFoundError: when the data folder or a cohort file is missing.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"CGM data folder not found: {data_dir}")
    out: dict[str, SubjectReadings] = {}
    for name in cohorts:
        subjects = read_cgm_csv(data_dir / f"{name}.csv.gz", cohort=name)
        meta_path = data_dir / f"{name}-metadata.csv"
        meta = read_metadata(meta_path) if meta_path.exists() else {}
        for sid, readings in subjects.items():
            readings.cohort = name
            readings.info = meta.get(sid, {})
            out[f"{name}/{sid}"] = readings
    return out


def age_band(info: dict[str, str]) -> str:
    """Age group label used to audit bias (GUIDE section 8): child, adolescent, adult, older adult."""
    text = info.get("age", "").strip()
    try:
        # An age range ("35-65", BIGIDEAs) counts at its midpoint.
        age = float(np.mean([float(part) for part in text.split("-")]))
    except ValueError:
        return "age unknown"
    if age < 13:
        return "child (<13)"
    if age < 18:
        return "adolescent (13-17)"
    if age < 65:
        return "adult (18-64)"
    return "older adult (65+)"


def diabetes_group(info: dict[str, str]) -> str:
    """Diabetes type label used to audit bias (GUIDE section 8: type 1 against type 2), from the metadata."""
    # "T1D (simulated)" is type 1 too.
    raw = info.get("diabetes_type", "").split("(")[0].strip().lower().replace(" ", "")
    groups = {"t1d": "type 1", "type1": "type 1", "t2d": "type 2", "type2": "type 2"}
    if raw in groups:
        return groups[raw]
    if raw == "prediabetes":
        return "prediabetes"
    if raw in ("nodiabetes", "none", "nondiabetic"):
        return "no diabetes"
    return "type unknown"


def build_grid(readings: SubjectReadings, subject_starts: np.ndarray | None = None) -> Grid:
    """Place one subject's sorted readings on a causal 5-minute grid.

    Why this shape: within a segment (no gap > 30 min) the slot of a reading is
    ``round((t - anchor) / 5 min)`` with the anchor at the segment's first
    reading, so 1-minute uploads, 5-minute sensors and 15-minute Libre records
    all land on one 5-minute lattice. When two readings fall in one slot the
    first wins, so a later near-duplicate can never change an earlier forecast.
    Gaps of at most 15 minutes between real readings are linearly interpolated;
    longer gaps stay NaN and masked.

    ``subject_starts`` (reading indices) marks where one subject of a concatenated batch ends and the
    next begins; each must start a segment. Those gaps get SUBJECT_GAP_SLOTS empty slots instead of
    MAX_EMPTY_SLOTS.
    """
    times = readings.times
    n = times.shape[0]
    if n == 0:
        empty_f = np.zeros(0, dtype=np.float64)
        empty_b = np.zeros(0, dtype=bool)
        return Grid(
            reading_slot=np.zeros(0, dtype=np.int64),
            reading_kept=empty_b,
            value=empty_f,
            observed=empty_b,
            interpolated=empty_b,
            slot_time=np.zeros(0, dtype=np.int64),
            carbs=empty_f,
            insulin=empty_f,
        )
    dt = times[1:] - times[:-1]
    # Passes over the readings are what this costs (the worker grids a whole batch at once), and numpy
    # calls are what it costs for one patient, so each quantity is derived in as few as possible; the
    # results are exactly those of the plain formulation (segment id per reading, scatter, running max).
    seg_start_idx = np.flatnonzero(dt > SEGMENT_BREAK_MINUTES * 60) + 1
    n_segments = seg_start_idx.shape[0] + 1
    if n_segments == 1:
        # One segment (a lone patient's recent readings): a single anchor, no offsets.
        seg_start_idx = np.zeros(1, dtype=np.int64)
        seg_len = np.array([n])
        seg_anchor_time = times[:1]
        local_slot = np.rint((times - times[0]) / GRID_SECONDS).astype(np.int64)
    else:
        seg_start_idx = np.concatenate([[0], seg_start_idx])
        seg_len = np.empty(n_segments, dtype=np.int64)
        np.subtract(seg_start_idx[1:], seg_start_idx[:-1], out=seg_len[:-1])
        seg_len[-1] = n - seg_start_idx[-1]
        seg_anchor_time = times[seg_start_idx]
        local_slot = np.rint((times - np.repeat(seg_anchor_time, seg_len)) / GRID_SECONDS).astype(np.int64)
    # Offsets of each segment on the global slot axis: previous segment's last
    # slot plus the (capped) gap expressed in slots.
    seg_offset = np.zeros(n_segments, dtype=np.int64)
    if n_segments > 1:
        gap_secs = times[seg_start_idx[1:]] - times[seg_start_idx[1:] - 1]
        gap_slots = np.minimum(np.rint(gap_secs / GRID_SECONDS).astype(np.int64), MAX_EMPTY_SLOTS)
        if subject_starts is not None:
            starts_subject = np.zeros(n, dtype=bool)
            starts_subject[subject_starts] = True
            gap_slots[starts_subject[seg_start_idx[1:]]] = SUBJECT_GAP_SLOTS
        prev_end_local = local_slot[seg_start_idx[1:] - 1]
        # Segment k starts gap_slots after the last slot of segment k-1.
        steps = prev_end_local + gap_slots
        seg_offset[1:] = np.cumsum(steps)
    slot = local_slot if n_segments == 1 else np.repeat(seg_offset, seg_len) + local_slot
    # With times in order, slots rise within a segment and each segment starts at least 6 slots after the
    # previous one ends (a break is > 30 min), so slot numbers are non-decreasing and segment k owns
    # exactly the slots [seg_offset[k], seg_offset[k + 1]). Out-of-order input is guarded as before.
    in_order = bool((dt >= 0).all())
    if not in_order:
        slot = np.maximum.accumulate(slot)
    # Keep the first reading per slot (input is sorted by time, stable).
    kept = np.empty(n, dtype=bool)
    kept[0] = True
    np.greater(slot[1:], slot[:-1], out=kept[1:])
    all_kept = bool(kept.all())  # the usual case: then no boolean selections below
    n_slots = int(slot[-1]) + 1
    value = np.full(n_slots, np.nan)
    observed = np.zeros(n_slots, dtype=bool)
    ks = slot if all_kept else slot[kept]
    value[ks] = readings.glucose if all_kept else readings.glucose[kept]
    observed[ks] = True
    # Nominal time of every slot: anchor of the slot's segment + 5 min * local.
    if in_order:
        slot_time = np.arange(0, n_slots * GRID_SECONDS, GRID_SECONDS)
        if n_segments == 1:
            slot_time += times[0]
        else:
            slot_seg_len = np.empty(n_segments, dtype=np.int64)
            np.subtract(seg_offset[1:], seg_offset[:-1], out=slot_seg_len[:-1])
            slot_seg_len[-1] = n_slots - seg_offset[-1]
            slot_time += np.repeat(seg_anchor_time - seg_offset * GRID_SECONDS, slot_seg_len)
    else:
        seg_id = np.repeat(np.arange(n_segments), seg_len)
        slot_seg = np.zeros(n_slots, dtype=np.int64)
        slot_seg[ks] = seg_id[kept]
        slot_seg = np.maximum.accumulate(slot_seg)
        slot_time = seg_anchor_time[slot_seg] + (np.arange(n_slots) - seg_offset[slot_seg]) * GRID_SECONDS
    # Interpolate short gaps between consecutive kept readings.
    interpolated = np.zeros(n_slots, dtype=bool)
    if ks.shape[0] > 1:
        gap = ks[1:] - ks[:-1]
        max_gap_slots = MAX_INTERPOLATED_GAP_MINUTES // GRID_MINUTES
        holes = np.flatnonzero(gap > 1)  # few: most consecutive kept readings sit in adjacent slots
        fill = holes[gap[holes] <= max_gap_slots]
        for start, g in zip(ks[fill].tolist(), gap[fill].tolist(), strict=True):
            v0, v1 = value[start], value[start + g]
            frac = np.arange(1, g) / g
            value[start + 1 : start + g] = v0 + (v1 - v0) * frac
            interpolated[start + 1 : start + g] = True
    # Treatments are summed into their reading's slot (duplicates included) so
    # that a bolus logged on a dropped near-duplicate row is not lost.
    carbs = np.zeros(n_slots) if readings.carbs is None else np.bincount(slot, readings.carbs, n_slots)
    insulin = np.zeros(n_slots) if readings.insulin is None else np.bincount(slot, readings.insulin, n_slots)
    return Grid(
        reading_slot=slot,
        reading_kept=kept,
        value=value,
        observed=observed,
        interpolated=interpolated,
        slot_time=slot_time,
        carbs=carbs,
        insulin=insulin,
        has_treatments=readings.carbs is not None or readings.insulin is not None,
    )


#: A reading within this many seconds of its slot's nominal time, and the one that defines the slot, is
#: forecast from the shared grid; any other reading (1- or 3-minute sensors, near-duplicates, drifted
#: clocks) from a lattice of its own (:func:`origin_lattice`).
ON_GRID_SECONDS = 60


def off_grid(times: np.ndarray, grid: Grid, index: np.ndarray | None = None) -> np.ndarray:
    """Bool per reading (all, or those at ``index``): readings the grid cannot forecast from at their time.

    ``grid`` was built from ``times``. The grid keeps the first reading of each 5-minute slot at the
    slot's nominal time. For a reading that lost its slot to an earlier one, or sits more than
    ON_GRID_SECONDS from the slot's time, a forecast from the grid would start from an older value and
    aim at the wrong minutes.
    """
    if index is None:
        index = np.arange(times.shape[0])
    slot = grid.reading_slot[index]
    return ~grid.reading_kept[index] | (np.abs(times[index] - grid.slot_time[slot]) > ON_GRID_SECONDS)


@dataclass
class LatticeContext:
    """Context windows on lattices that end exactly at each origin reading (``t0 - 5 min * k``).

    Attributes (``M`` origins, ``L`` context slots, oldest first):
        value: ``[M, L]`` float64 mg/dL, NaN where nothing is known.
        observed: ``[M, L]`` bool, a real reading lies within half a slot of the lattice point.
        slot_time: ``[M, L]`` int64 seconds of each lattice point.
        carbs / insulin: ``[M, L]`` float64 summed over the half-slot around each point, or None.
        origin_value: ``[M]`` mg/dL of the origin reading itself.
    """

    value: np.ndarray
    observed: np.ndarray
    slot_time: np.ndarray
    carbs: np.ndarray | None
    insulin: np.ndarray | None
    origin_value: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[LatticeContext]) -> LatticeContext:
        """Stack several subjects' contexts; treatment channels are zero for parts without them."""
        treated = any(p.carbs is not None for p in parts)

        def channel(p: LatticeContext, values: np.ndarray | None) -> np.ndarray:
            return np.zeros(p.value.shape) if values is None else values

        return cls(
            value=np.concatenate([p.value for p in parts]),
            observed=np.concatenate([p.observed for p in parts]),
            slot_time=np.concatenate([p.slot_time for p in parts]),
            carbs=np.concatenate([channel(p, p.carbs) for p in parts]) if treated else None,
            insulin=np.concatenate([channel(p, p.insulin) for p in parts]) if treated else None,
            origin_value=np.concatenate([p.origin_value for p in parts]),
        )


def origin_lattice(readings: SubjectReadings, origins: np.ndarray, context_steps: int) -> LatticeContext:
    """Resample one subject's readings onto a 5-minute lattice ending at each origin reading.

    The same rules as :func:`build_grid`, seen from the origin: a point with a reading within 2.5 min
    takes that reading's value (the nearest; ties go to the earlier one), points between two readings at
    most 15 minutes apart are interpolated, anything else is unknown. Only readings at or before the
    origin's time are used, so the result is causal.

    Args:
        readings: sorted readings of one subject.
        origins: ``[M]`` indices into ``readings`` of the origin readings.
        context_steps: ``L``, lattice points per origin, the last one at the origin.
    """
    times = readings.times
    origin_time = times[origins]
    steps = np.arange(-(context_steps - 1), 1, dtype=np.int64) * GRID_SECONDS
    point = origin_time[:, None] + steps[None, :]
    half = GRID_SECONDS // 2
    # Readings after the origin's time must not count: cap every search at the origin's own position.
    limit = np.searchsorted(times, origin_time, side="right")[:, None]
    before = np.minimum(np.searchsorted(times, point, side="right"), limit) - 1
    after = np.minimum(before + 1, limit - 1)
    has_before = before >= 0
    t_before = times[np.maximum(before, 0)]
    t_after = times[after]
    has_after = t_after > point
    d_before = np.where(has_before, point - t_before, np.iinfo(np.int64).max)
    d_after = np.where(has_after, t_after - point, np.iinfo(np.int64).max)
    use_after = d_after < d_before
    nearest_d = np.where(use_after, d_after, d_before)
    observed = nearest_d <= half
    nearest = np.where(use_after, after, np.maximum(before, 0))
    value = np.where(observed, readings.glucose[nearest], np.nan)
    gap = t_after - t_before
    between = ~observed & has_before & has_after & (gap <= MAX_INTERPOLATED_GAP_MINUTES * 60)
    if between.any():
        g0, g1 = readings.glucose[np.maximum(before, 0)], readings.glucose[after]
        frac = (point - t_before) / np.maximum(gap, 1)
        value = np.where(between, g0 + (g1 - g0) * frac, value)
    value[:, -1] = readings.glucose[origins]
    observed[:, -1] = True

    carbs = insulin = None
    if readings.carbs is not None or readings.insulin is not None:
        # A subject with either column has both channels, the missing one zero (as build_grid does).
        lo = np.minimum(np.searchsorted(times, point - half, side="right"), limit)
        hi = np.minimum(np.searchsorted(times, point + half, side="right"), limit)
        sums = []
        for channel in (readings.carbs, readings.insulin):
            cumulative = np.concatenate([[0.0], np.cumsum(channel)]) if channel is not None else None
            sums.append(np.zeros(point.shape) if cumulative is None else cumulative[hi] - cumulative[lo])
        carbs, insulin = sums

    return LatticeContext(
        value=value,
        observed=observed,
        slot_time=point,
        carbs=carbs,
        insulin=insulin,
        origin_value=readings.glucose[origins],
    )


def readings_from_arrays(
    times: np.ndarray | list[object],
    glucose: np.ndarray | list[object],
    subject_id: str = "patient",
    carbs: np.ndarray | None = None,
    insulin: np.ndarray | None = None,
) -> SubjectReadings:
    """Build sorted :class:`SubjectReadings` from arrays.

    Args:
        times: datetime64 values, ISO strings, or int seconds since epoch.
        glucose: numbers or "Low"/"High" words.
    """
    t = np.asarray(times)
    if np.issubdtype(t.dtype, np.integer):
        secs = t.astype(np.int64)
    elif np.issubdtype(t.dtype, np.floating):
        secs = np.rint(t).astype(np.int64)
    else:
        secs = parse_timestamps(pd.Series(t.astype(str)))
    g, flags = parse_glucose(np.asarray(glucose, dtype=object))
    valid = ~np.isnan(g) & (secs != np.iinfo(np.int64).min)
    order = np.argsort(secs[valid], kind="stable")

    def pick(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a, dtype=np.float64)[valid][order]

    return SubjectReadings(
        subject_id=subject_id,
        times=secs[valid][order],
        glucose=g[valid][order],
        flags=flags[valid][order],
        carbs=pick(carbs),
        insulin=pick(insulin),
        raw_timestamps=None,
    )


@dataclass
class BatchReadings:
    """Many subjects' sorted readings in flat arrays: subject ``i`` owns ``[offsets[i], offsets[i + 1])``.

    The worker's form of a batch: one array per field instead of one :class:`SubjectReadings` per patient,
    so preparing a batch is a fixed number of numpy calls however many patients it holds.

    Attributes:
        subject_ids: ``P`` identifiers, in batch order.
        offsets: ``[P + 1]`` int64 reading offsets (non-decreasing; an empty subject has two equal ones).
        times / glucose / flags: as in :class:`SubjectReadings`, concatenated (``[N]``).
        carbs / insulin: ``[N]`` float64 (zeros for subjects without treatment data).
        has_treatments: ``[P]`` bool, whether each subject supplied carbs or insulin at all.
    """

    subject_ids: list[str]
    offsets: np.ndarray
    times: np.ndarray
    glucose: np.ndarray
    flags: np.ndarray
    carbs: np.ndarray
    insulin: np.ndarray
    has_treatments: np.ndarray

    def __len__(self) -> int:
        return len(self.subject_ids)

    @property
    def lengths(self) -> np.ndarray:
        return self.offsets[1:] - self.offsets[:-1]

    def subject(self, i: int) -> SubjectReadings:
        """Subject ``i`` as :class:`SubjectReadings` (treatment arrays only where it has them)."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        treated = bool(self.has_treatments[i])
        return SubjectReadings(
            subject_id=self.subject_ids[i],
            times=self.times[lo:hi],
            glucose=self.glucose[lo:hi],
            flags=self.flags[lo:hi],
            carbs=self.carbs[lo:hi] if treated else None,
            insulin=self.insulin[lo:hi] if treated else None,
        )


def batch_from_subjects(subjects: list[SubjectReadings]) -> BatchReadings:
    """Concatenate already-sorted :class:`SubjectReadings` into one :class:`BatchReadings`."""
    lengths = np.array([len(s) for s in subjects], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    def channel(s: SubjectReadings, values: np.ndarray | None) -> np.ndarray:
        return np.zeros(len(s)) if values is None else np.asarray(values, dtype=np.float64)

    return BatchReadings(
        subject_ids=[s.subject_id for s in subjects],
        offsets=offsets,
        times=cat([s.times for s in subjects], np.int64),
        glucose=cat([s.glucose for s in subjects], np.float64),
        flags=cat([s.flags for s in subjects], np.int8),
        carbs=cat([channel(s, s.carbs) for s in subjects], np.float64),
        insulin=cat([channel(s, s.insulin) for s in subjects], np.float64),
        has_treatments=np.array([s.carbs is not None or s.insulin is not None for s in subjects], dtype=bool),
    )


def batch_from_arrays(
    times: np.ndarray,
    glucose: np.ndarray | list[object],
    lengths: np.ndarray | list[int],
    subject_ids: list[str],
    carbs: np.ndarray | None = None,
    insulin: np.ndarray | None = None,
    has_treatments: np.ndarray | None = None,
) -> BatchReadings:
    """Build a :class:`BatchReadings` from concatenated raw arrays in one pass.

    Equivalent to :func:`readings_from_arrays` on each subject's slice (same parsing, clamping and
    flags, same invalid-row dropping, same stable time order), without any per-subject work.

    Args:
        times: ``[N]`` int (or float) seconds since the epoch, subject after subject.
        glucose: ``[N]`` numbers or "Low"/"High" words.
        lengths: ``[P]`` readings per subject (summing to N).
        subject_ids: ``P`` identifiers.
        carbs / insulin: ``[N]`` optional treatment channels, grams and units per reading.
        has_treatments: ``[P]`` bool, which subjects' treatments are known (the rest read as
            glucose-only even where their channels hold zeros). Default: every subject when carbs or
            insulin is given, none otherwise.
    """
    counts = np.asarray(lengths, dtype=np.int64)
    if counts.shape[0] != len(subject_ids):
        raise ValueError(f"lengths has {counts.shape[0]} entries for {len(subject_ids)} subject ids")
    if has_treatments is not None and len(has_treatments) != len(subject_ids):
        raise ValueError(f"has_treatments has {len(has_treatments)} entries for {len(subject_ids)} subject ids")
    t = np.asarray(times)
    secs = np.rint(t).astype(np.int64) if np.issubdtype(t.dtype, np.floating) else t.astype(np.int64)
    if secs.shape[0] != int(counts.sum()):
        raise ValueError(f"times has {secs.shape[0]} readings but lengths sum to {int(counts.sum())}")
    g, flags = parse_glucose(glucose)
    n = secs.shape[0]
    ends = np.cumsum(counts)
    # Readings from the database arrive valid and in time order per subject; then the stable sort below
    # would be the identity, and checking that is much cheaper than sorting.
    step_ok = secs[1:] >= secs[:-1]
    step_ok[ends[(ends > 0) & (ends < n)] - 1] = True  # a new subject may start earlier
    in_order = bool(step_ok.all()) and not np.isnan(g).any() and not (secs == np.iinfo(np.int64).min).any()
    if in_order:
        # secs, g and flags are this call's own arrays: used as they are, not gathered through arange.
        idx = None
        offsets = np.concatenate([[0], ends]).astype(np.int64)
    else:
        valid = ~np.isnan(g) & (secs != np.iinfo(np.int64).min)
        owner = np.repeat(np.arange(counts.shape[0]), counts)
        idx = np.flatnonzero(valid)
        # Stable sort by (subject, time): ties keep input order, as readings_from_arrays' stable argsort does.
        idx = idx[np.lexsort((secs[idx], owner[idx]))]
        kept = np.bincount(owner[idx], minlength=counts.shape[0]).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        secs, g, flags = secs[idx], g[idx], flags[idx]
        n = idx.shape[0]

    def pick(a: np.ndarray | None) -> np.ndarray:
        if a is None:
            return np.zeros(n)
        a = np.asarray(a, dtype=np.float64)
        return a.copy() if idx is None else a[idx]

    return BatchReadings(
        subject_ids=list(subject_ids),
        offsets=offsets,
        times=secs,
        glucose=g,
        flags=flags,
        carbs=pick(carbs),
        insulin=pick(insulin),
        has_treatments=(
            np.full(counts.shape[0], carbs is not None or insulin is not None) if has_treatments is None
            else np.asarray(has_treatments, dtype=bool)
        ),
    )
