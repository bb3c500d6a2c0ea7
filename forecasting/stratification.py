"""Glucotype stratification in the spirit of Hall et al. (PLoS Biology 2018).

Hall H, et al. "Glucotypes reveal new patterns of glucose dysregulation." PLoS Biol
2018;16(7):e2005143. doi:10.1371/journal.pbio.2005143. They cut CGM traces into 2.5-hour
windows, clustered the windows into low / moderate / severe variability patterns and gave each
person the glucotype they spend most time in, together with the share of time in each.

Here (pure numpy + tslearn, no Django):

* :func:`make_windows` cuts a patient's series into non-overlapping complete windows on a regular
  grid (default 2.5 h of 5-minute samples = 30 points).
* :class:`GlucotypeClassifier` is a scikit-learn style estimator around tslearn's
  ``TimeSeriesKMeans``. Default: Euclidean k-means on each window's *sorted* values (its
  empirical quantile function), which is insensitive to where in the window a peak happens and
  fast. Option: ``representation="raw"`` (the window as a time series) and/or
  ``metric="dtw"`` with a Sakoe-Chiba band on block-averaged (downsampled) windows, because
  full DTW k-means is far too slow for cohort scale.
* Clusters are named clinically by ordering them on the mean within-window SD of their members
  (ties broken by mean within-window range): ``low``, ``moderate``, ``severe`` for k=3.
* Persistence uses tslearn's own JSON serialisation (``to_json``/``from_json``) plus a small
  extra JSON key with our fitted attributes; never pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tslearn.clustering import TimeSeriesKMeans

from glucoscope.metrics import clean_series, regular_grid

HALL_CITATION = "Hall H, et al. PLoS Biol 2018;16(7):e2005143. doi:10.1371/journal.pbio.2005143"
_JSON_KEY = "glucoscope_glucotype"
_FORMAT_VERSION = 1

FloatArray = npt.NDArray[np.float64]


def make_windows(
    values_mg_dl: npt.ArrayLike,
    timestamps: object,
    window_minutes: int = 150,
    interval_minutes: float = 5.0,
    inter_gap_minutes: float = 20.0,
    utc_offset_seconds: float | npt.ArrayLike | None = None,
) -> FloatArray:
    """Non-overlapping complete windows, shape (n_windows, window_minutes / interval_minutes).

    Readings are interpolated onto a regular grid (short gaps <= ``inter_gap_minutes`` only,
    so a window never spans a real sensor outage); windows with any missing point are dropped.
    Timestamps follow the contract of :mod:`glucoscope.metrics._input`.
    """
    length = round(window_minutes / interval_minutes)
    s = clean_series(values_mg_dl, timestamps, utc_offset_seconds)
    _, g = regular_grid(s.values, s.t_abs, interval_minutes, inter_gap_minutes)
    n_win = g.size // length
    if n_win == 0:
        return np.empty((0, length))
    w = g[: n_win * length].reshape(n_win, length)
    return w[np.isfinite(w).all(axis=1)]


def _block_mean(x: FloatArray, factor: int) -> FloatArray:
    """Average consecutive blocks of ``factor`` samples (drops the remainder)."""
    if factor <= 1:
        return x
    n = x.shape[1] // factor
    return x[:, : n * factor].reshape(x.shape[0], n, factor).mean(axis=2)


@dataclass(frozen=True)
class PatientGlucotype:
    """A patient's dominant glucotype and the share of windows (time) spent in each class."""

    glucotype: str | None
    shares: dict[str, float]
    n_windows: int
    citation: str = HALL_CITATION


class GlucotypeClassifier(BaseEstimator):  # type: ignore[misc]
    """Cluster CGM windows into variability classes and assign patients (Hall 2018).

    Parameters
    ----------
    n_clusters: number of classes (3 gives low / moderate / severe).
    metric: ``"euclidean"`` (fast default) or ``"dtw"`` (Sakoe-Chiba band, downsampled).
    representation: ``"sorted"`` (window quantile function, default) or ``"raw"``.
    window_minutes, interval_minutes: window geometry (2.5 h of 5-min samples by default).
    dtw_downsample: block-average factor applied before DTW (30 -> 10 points by default).
    sakoe_chiba_radius: DTW band radius in (downsampled) samples.
    max_fit_windows: k-means is fitted on at most this many randomly drawn windows; the
        centroids of a 3-cluster problem are stable long before that and it bounds fit time.
    max_iter, n_init, random_state: passed to tslearn.

    Fitted attributes: ``kmeans_``, ``cluster_to_class_`` (k-means cluster -> ordered class),
    ``class_names_``, ``class_mean_sd_``, ``class_mean_range_``, ``class_mean_glucose_``,
    ``n_features_in_``.
    """

    def __init__(
        self,
        n_clusters: int = 3,
        metric: Literal["euclidean", "dtw"] = "euclidean",
        representation: Literal["sorted", "raw"] = "sorted",
        window_minutes: int = 150,
        interval_minutes: float = 5.0,
        dtw_downsample: int = 3,
        sakoe_chiba_radius: int = 2,
        max_fit_windows: int = 20000,
        max_iter: int = 50,
        n_init: int = 2,
        random_state: int | None = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.metric = metric
        self.representation = representation
        self.window_minutes = window_minutes
        self.interval_minutes = interval_minutes
        self.dtw_downsample = dtw_downsample
        self.sakoe_chiba_radius = sakoe_chiba_radius
        self.max_fit_windows = max_fit_windows
        self.max_iter = max_iter
        self.n_init = n_init
        self.random_state = random_state

    # ---------------------------------------------------------------- representation
    def _represent(self, windows: npt.ArrayLike) -> FloatArray:
        x = np.asarray(windows, dtype=np.float64)
        if x.ndim == 3 and x.shape[2] == 1:
            x = x[:, :, 0]
        if x.ndim != 2:
            raise ValueError("windows must be a 2-D array (n_windows, n_points)")
        if self.representation == "sorted":
            x = np.sort(x, axis=1)
        elif self.representation != "raw":
            raise ValueError(f"unknown representation {self.representation!r}")
        if self.metric == "dtw":
            x = _block_mean(x, self.dtw_downsample)
        elif self.metric != "euclidean":
            raise ValueError(f"unknown metric {self.metric!r}")
        return x

    def _make_kmeans(self) -> TimeSeriesKMeans:
        params: dict[str, Any] | None = None
        if self.metric == "dtw":
            params = {
                "global_constraint": "sakoe_chiba",
                "sakoe_chiba_radius": self.sakoe_chiba_radius,
            }
        return TimeSeriesKMeans(
            n_clusters=self.n_clusters,
            metric=self.metric,
            metric_params=params,
            max_iter=self.max_iter,
            n_init=self.n_init,
            random_state=self.random_state,
        )

    # ---------------------------------------------------------------- sklearn API
    def fit(self, X: npt.ArrayLike, y: None = None) -> GlucotypeClassifier:
        """Fit on windows (n_windows, n_points) in mg/dL, e.g. stacked :func:`make_windows`."""
        raw = np.asarray(X, dtype=np.float64)
        if raw.ndim == 3 and raw.shape[2] == 1:
            raw = raw[:, :, 0]
        if raw.ndim != 2 or raw.shape[0] < self.n_clusters:
            raise ValueError("need a 2-D array with at least n_clusters windows")
        rng = np.random.default_rng(self.random_state)
        if raw.shape[0] > self.max_fit_windows:
            raw = raw[rng.choice(raw.shape[0], self.max_fit_windows, replace=False)]
        km = self._make_kmeans()
        labels = km.fit_predict(self._represent(raw)[:, :, None])
        sd = raw.std(axis=1)
        rng_w = raw.max(axis=1) - raw.min(axis=1)
        mean = raw.mean(axis=1)
        k = self.n_clusters
        c_sd = np.array([sd[labels == c].mean() if np.any(labels == c) else np.inf for c in range(k)])
        c_rng = np.array([rng_w[labels == c].mean() if np.any(labels == c) else np.inf for c in range(k)])
        c_mean = np.array([mean[labels == c].mean() if np.any(labels == c) else np.nan for c in range(k)])
        # Order clusters by variability so class 0 is always "low" regardless of k-means seeding.
        order = np.lexsort((c_rng, c_sd))
        cluster_to_class = np.empty(k, dtype=np.int64)
        cluster_to_class[order] = np.arange(k)
        self.kmeans_ = km
        self.cluster_to_class_ = cluster_to_class
        self.class_names_ = _class_names(k)
        self.class_mean_sd_ = c_sd[order]
        self.class_mean_range_ = c_rng[order]
        self.class_mean_glucose_ = c_mean[order]
        self.n_features_in_ = int(np.asarray(X).shape[1])
        return self

    def predict(self, X: npt.ArrayLike, chunk_size: int = 200_000) -> npt.NDArray[np.int64]:
        """Ordered class index per window (0 = lowest variability)."""
        check_is_fitted(self, "kmeans_")
        x = self._represent(X)
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.int64)
        out = np.empty(x.shape[0], dtype=np.int64)
        for a in range(0, x.shape[0], chunk_size):
            out[a : a + chunk_size] = self._assign(x[a : a + chunk_size])
        return self.cluster_to_class_[out]

    def _assign(self, x: FloatArray) -> npt.NDArray[np.int64]:
        if self.metric == "euclidean":
            # Same argmin as tslearn's Euclidean predict, without its per-call 3-D conversion
            # and validation, which dominates at a million windows.
            c = np.asarray(self.kmeans_.cluster_centers_, dtype=np.float64)[:, :, 0]
            d = (x * x).sum(axis=1)[:, None] - 2.0 * x @ c.T + (c * c).sum(axis=1)[None, :]
            return np.argmin(d, axis=1).astype(np.int64)
        return np.asarray(self.kmeans_.predict(x[:, :, None]), dtype=np.int64)

    def predict_names(self, X: npt.ArrayLike) -> list[str]:
        return [self.class_names_[i] for i in self.predict(X)]

    # ---------------------------------------------------------------- patients
    def shares_from_labels(
        self, labels: npt.ArrayLike, patient_index: npt.ArrayLike, n_patients: int
    ) -> tuple[npt.NDArray[np.int64], FloatArray, npt.NDArray[np.int64]]:
        """Vectorised per-patient (dominant class, share matrix, window counts).

        Dominant class is -1 for a patient without windows. Ties go to the lower-variability
        class (argmax takes the first), the conservative choice for a patient-facing label.
        """
        check_is_fitted(self, "kmeans_")
        lab = np.asarray(labels, dtype=np.int64)
        pid = np.asarray(patient_index, dtype=np.int64)
        k = self.n_clusters
        counts = np.bincount(pid * k + lab, minlength=n_patients * k).reshape(n_patients, k)
        n = counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(n[:, None] > 0, counts / np.maximum(n, 1)[:, None], 0.0)
        dominant = np.where(n > 0, counts.argmax(axis=1), -1)
        return dominant, shares, n

    def classify_windows(self, windows: npt.ArrayLike) -> PatientGlucotype:
        """Glucotype of one patient from their windows (see :func:`make_windows`)."""
        w = np.asarray(windows, dtype=np.float64)
        labels = self.predict(w) if w.shape[0] else np.empty(0, dtype=np.int64)
        dom, shares, n = self.shares_from_labels(labels, np.zeros(labels.size), 1)
        names = self.class_names_
        return PatientGlucotype(
            glucotype=None if dom[0] < 0 else names[int(dom[0])],
            shares={names[i]: float(shares[0, i]) for i in range(self.n_clusters)},
            n_windows=int(n[0]),
        )

    def classify_patient(
        self,
        values_mg_dl: npt.ArrayLike,
        timestamps: object,
        utc_offset_seconds: float | npt.ArrayLike | None = None,
    ) -> PatientGlucotype:
        """Cut one patient's series into windows and return their glucotype and shares."""
        w = make_windows(
            values_mg_dl,
            timestamps,
            self.window_minutes,
            self.interval_minutes,
            utc_offset_seconds=utc_offset_seconds,
        )
        return self.classify_windows(w)

    # ---------------------------------------------------------------- persistence (no pickle)
    def to_json(self, path: str | Path) -> None:
        """Write tslearn's JSON for the k-means model plus our attributes under one extra key.

        The file stays loadable by plain ``TimeSeriesKMeans.from_json`` (extra key ignored).
        """
        check_is_fitted(self, "kmeans_")
        path = Path(path)
        self.kmeans_.to_json(str(path))
        doc = json.loads(path.read_text())
        doc[_JSON_KEY] = {
            "format_version": _FORMAT_VERSION,
            "params": self.get_params(),
            "cluster_to_class_": self.cluster_to_class_.tolist(),
            "class_names_": list(self.class_names_),
            "class_mean_sd_": self.class_mean_sd_.tolist(),
            "class_mean_range_": self.class_mean_range_.tolist(),
            "class_mean_glucose_": self.class_mean_glucose_.tolist(),
            "n_features_in_": self.n_features_in_,
        }
        path.write_text(json.dumps(doc))

    @classmethod
    def from_json(cls, path: str | Path) -> GlucotypeClassifier:
        path = Path(path)
        meta = json.loads(path.read_text())[_JSON_KEY]
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported glucotype model format {meta.get('format_version')!r}")
        est = cls(**meta["params"])
        est.kmeans_ = TimeSeriesKMeans.from_json(str(path))
        est.cluster_to_class_ = np.asarray(meta["cluster_to_class_"], dtype=np.int64)
        est.class_names_ = list(meta["class_names_"])
        est.class_mean_sd_ = np.asarray(meta["class_mean_sd_"], dtype=np.float64)
        est.class_mean_range_ = np.asarray(meta["class_mean_range_"], dtype=np.float64)
        est.class_mean_glucose_ = np.asarray(meta["class_mean_glucose_"], dtype=np.float64)
        est.n_features_in_ = int(meta["n_features_in_"])
        return est


def _class_names(k: int) -> list[str]:
    if k == 3:
        return ["low", "moderate", "severe"]
    if k == 2:
        return ["low", "high"]
    return [f"variability_{i}" for i in range(k)]


# -------------------------------------------------------------------- synthetic data
def synthetic_patients(
    n_patients: int,
    days: int = 14,
    interval_minutes: float = 5.0,
    seed: int = 0,
    kinds: Sequence[int] | None = None,
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Seeded synthetic CGM traces (n_patients, days*points_per_day) and their latent kind.

    Kind 0/1/2 = low/moderate/severe variability: a baseline plus three daily meal responses
    whose height grows with kind, and AR(1) noise. Only meant for tests and benchmarks: it has
    the structure the clustering should recover, not physiological realism.
    """
    rng = np.random.default_rng(seed)
    ppd = round(1440 / interval_minutes)
    n = days * ppd
    kind = rng.integers(0, 3, n_patients) if kinds is None else np.asarray(kinds, dtype=np.int64)
    base = np.array([92.0, 115.0, 140.0])[kind] + rng.normal(0, 5, n_patients)
    peak = np.array([18.0, 55.0, 120.0])[kind]
    t_h = np.arange(n) * interval_minutes / 60.0
    tod = t_h % 24.0
    x = np.repeat(base[:, None], n, axis=1)
    for meal_h in (7.5, 12.5, 19.0):
        dt = tod[None, :] - (meal_h + rng.normal(0, 0.5, (n_patients, 1)))
        # Gamma-like rise and fall over ~3 h after each meal.
        resp = np.where(dt > 0, (dt / 1.0) * np.exp(1.0 - dt / 1.0), 0.0)
        amp = peak[:, None] * rng.uniform(0.6, 1.4, (n_patients, 1))
        x += amp * resp
    noise = rng.normal(0, 1, (n_patients, n))
    # Short moving-average filter instead of an AR(1) recursion: a Python loop over ~4000 time
    # steps would dominate the benchmark, and the clustering only needs correlated noise.
    ar = noise.copy()
    for lag, w in ((1, 0.7), (2, 0.49), (3, 0.343)):
        ar[:, lag:] += w * noise[:, :-lag]
    x += 3.0 * ar
    return np.clip(x, 40.0, 400.0), kind


def windows_from_matrix(x: FloatArray, points_per_window: int) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Cut an evenly sampled, gap-free (n_patients, n_points) matrix into windows + patient ids."""
    n_pat, n_pts = x.shape
    n_win = n_pts // points_per_window
    w = x[:, : n_win * points_per_window].reshape(n_pat * n_win, points_per_window)
    return w, np.repeat(np.arange(n_pat, dtype=np.int64), n_win)
