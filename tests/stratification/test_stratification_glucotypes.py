"""Glucotype estimator on tiny seeded synthetic data (pure: no Django, no data files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from tslearn.clustering import TimeSeriesKMeans

from forecasting.stratification import (
    GlucotypeClassifier,
    make_windows,
    synthetic_patients,
    windows_from_matrix,
)


@pytest.fixture(scope="module")
def cohort() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, kind = synthetic_patients(30, days=3, seed=7, kinds=np.repeat([0, 1, 2], 10))
    w, pid = windows_from_matrix(x, 30)
    return x, kind, w, pid


@pytest.fixture(scope="module")
def fitted(cohort: tuple[np.ndarray, ...]) -> GlucotypeClassifier:
    return GlucotypeClassifier(random_state=0).fit(cohort[2])


def test_classes_are_ordered_by_variability(fitted: GlucotypeClassifier) -> None:
    assert fitted.class_names_ == ["low", "moderate", "severe"]
    assert np.all(np.diff(fitted.class_mean_sd_) > 0)
    assert sorted(fitted.cluster_to_class_.tolist()) == [0, 1, 2]


def test_severe_share_grows_with_latent_kind(fitted: GlucotypeClassifier, cohort: tuple[np.ndarray, ...]) -> None:
    _, kind, w, pid = cohort
    dom, shares, n = fitted.shares_from_labels(fitted.predict(w), pid, 30)
    assert np.all(n == 3 * 24 * 60 // 150)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    severe = [shares[kind == k, 2].mean() for k in range(3)]
    not_low = [shares[kind == k, 1:].sum(axis=1).mean() for k in range(3)]
    assert severe[0] <= severe[1] < severe[2]
    assert not_low[0] < not_low[1] < not_low[2]
    assert np.all(dom[kind == 0] == 0)  # low-variability patients are never labelled worse


def test_single_patient_from_timestamps(fitted: GlucotypeClassifier, cohort: tuple[np.ndarray, ...]) -> None:
    x = cohort[0]
    t = np.datetime64("2024-01-01T00:00") + np.arange(x.shape[1]) * np.timedelta64(5, "m")
    res = fitted.classify_patient(x[0], t)
    assert res.glucotype == "low" and res.n_windows == 28
    assert set(res.shares) == {"low", "moderate", "severe"}
    assert "Hall" in res.citation
    empty = fitted.classify_patient(np.array([]), np.array([], dtype="datetime64[s]"))
    assert empty.glucotype is None and empty.n_windows == 0


def test_make_windows_drops_incomplete_windows() -> None:
    t = np.arange(60, dtype=float) * 300  # 5 h -> two 2.5 h windows
    v = np.linspace(80, 200, 60)
    assert make_windows(v, t).shape == (2, 30)
    keep = np.ones(60, bool)
    keep[40:50] = False  # 50-minute hole in the second window
    assert make_windows(v[keep], t[keep]).shape == (1, 30)


def test_json_round_trip(fitted: GlucotypeClassifier, cohort: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    path = tmp_path / "glucotypes.json"
    fitted.to_json(path)
    doc = json.loads(path.read_text())
    assert "model_params" in doc and "glucoscope_glucotype" in doc  # tslearn format + our key
    loaded = GlucotypeClassifier.from_json(path)
    np.testing.assert_array_equal(loaded.predict(cohort[2]), fitted.predict(cohort[2]))
    assert loaded.get_params() == fitted.get_params()
    assert loaded.class_names_ == fitted.class_names_
    # The file remains a valid tslearn model on its own.
    km = TimeSeriesKMeans.from_json(str(path))
    np.testing.assert_allclose(km.cluster_centers_, fitted.kmeans_.cluster_centers_)


def test_dtw_option_on_downsampled_windows(cohort: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    w = cohort[2][::12]  # keep DTW k-means tiny: 70 windows of 10 points
    est = GlucotypeClassifier(metric="dtw", representation="raw", max_iter=3, n_init=1).fit(w)
    assert est.kmeans_.cluster_centers_.shape[1] == 10
    assert est.kmeans_.metric_params["global_constraint"] == "sakoe_chiba"
    labels = est.predict(w)
    assert set(labels.tolist()) <= {0, 1, 2}
    est.to_json(tmp_path / "dtw.json")
    np.testing.assert_array_equal(GlucotypeClassifier.from_json(tmp_path / "dtw.json").predict(w), labels)


def test_not_fitted_and_bad_input() -> None:
    with pytest.raises(NotFittedError):
        GlucotypeClassifier().predict(np.zeros((3, 30)))
    with pytest.raises(ValueError):
        GlucotypeClassifier().fit(np.zeros((2, 30)))
    with pytest.raises(ValueError):
        GlucotypeClassifier(metric="cosine").fit(np.random.default_rng(0).normal(size=(10, 30)))  # type: ignore[arg-type]
