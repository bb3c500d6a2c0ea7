"""Simulated type 1 cohorts from simglucose (UVA/Padova 2008 model, 30 virtual patients).

Pure numpy/pandas; no Django. simglucose 0.2.11 is used as published, through a thin
wrapper, because two of its imports no longer resolve in this environment:

* its package ``__init__`` registers a Gym environment with ``gym`` 0.9.4, a 2017
  package we do not need (we never use the Gym interface);
* its modules locate their parameter CSVs with ``pkg_resources``, which
  setuptools >= 81 no longer ships.

:func:`import_simglucose` installs minimal stand-ins for exactly those two names
(only when the real ones are absent) before importing it. Nothing of simglucose is
copied into this repository.

Why our own loop instead of ``simglucose.simulation.env.T1DSimEnv``: the published
scenario generator has fixed meal sizes and a controller that always knows the exact
carbohydrate count, which makes glucose far smoother than in real life. Here each
patient-day gets randomised meals and snacks, carbohydrate-counting errors, missed and
late boluses, basal-rate drift, rescue carbohydrates for lows and correction boluses for
highs; the dose itself is simglucose's ``BBController`` (carbohydrate ratio + correction
factor from its Quest table). The patient model, pump quantisation and sensor noise are
simglucose's own.

Why simglucose's own scenario as well (:func:`simulate_patient_published`, since v1.4.0): a model trained only
on the randomised days learned that a low is soon treated (the rescue carbohydrate there), so on days run with
simglucose's published ``T1DSimEnv`` + ``RandomScenario`` + ``BBController``, where nobody treats a low, it
forecast readings below 54 mg/dL 23 mg/dL too high at 30 min and 52 at 60 min (30 patients x 3 days). Anyone
evaluating with simglucose as published gets those days, so the cohort holds both kinds, and the model must
read the treatment channels to tell them apart.

Why correction boluses without a meal: with insulin only ever given at meals, a forecaster
learns the pair (insulin means a meal, so glucose rises) instead of what insulin does.

Output rows follow the shared ``../shared/data`` format with the optional treatment
columns: ``subject_id,timestamp,glucose_mg_dl,carbs_g,insulin_u``, one row per sensor
reading (every 5 minutes with GuardianRT, which training uses; the published days can also
use simglucose's other sensors); ``carbs_g`` is the carbohydrate eaten since the previous
reading and ``insulin_u`` the bolus insulin delivered in that time (basal is not logged, as in
most pump exports' bolus records, unless the published days are asked to log it).
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

SIM_COHORT = "simglucose"
AGE_GROUPS = ("child", "adolescent", "adult")
#: simglucose's 30 virtual patients: 10 per age group.
PATIENT_NAMES = tuple(f"{group}#{i:03d}" for group in AGE_GROUPS for i in range(1, 11))
SENSOR_NAME = "GuardianRT"  # the simglucose sensor with a 5-minute sample time
#: simglucose's sensors (its params/sensor_params.csv); the published days may use any of them.
SENSOR_NAMES = ("GuardianRT", "Dexcom", "Navigator")
PUMP_NAME = "Insulet"
SAMPLE_MINUTES = 5
START = datetime(2024, 1, 1, 0, 0, 0)
#: A patient considers a correction bolus when the sensor reads above this (mg/dL), no bolus was given in
#: the last CORRECTION_GAP_MINUTES, and then again at most once an hour; they take it with this probability.
CORRECTION_ABOVE_MGDL = 200.0
CORRECTION_GAP_MINUTES = 180
CORRECTION_PROBABILITY = 0.5
#: Part of the cache path: a change to the scenario (2: correction boluses) must not reuse older files.
SCENARIO_VERSION = 2
#: The two ways a patient's days are simulated (see the module docstring and :func:`simulate_patient_published`).
Scenario = Literal["randomised", "published"]
RANDOMISED: Scenario = "randomised"
PUBLISHED: Scenario = "published"
#: Part of the published days' cache path, as SCENARIO_VERSION is of the randomised days' (2: a random
#: stream of their own, apart from the randomised days' of the same patient and seed).
PUBLISHED_VERSION = 2
#: Subject ids are ``sim-<patient>`` (randomised) and ``sim-<patient>-published`` (:func:`subject_id`).
PUBLISHED_SUFFIX = "-published"
#: Readings are rounded like real sensor exports and clamped to the sensor range.
SENSOR_LOW, SENSOR_HIGH = 40.0, 400.0


def _install_shims() -> None:
    """Provide ``gym.envs.registration.register`` and ``pkg_resources.resource_filename``
    only if the real packages are missing (see the module docstring)."""
    try:
        importlib.import_module("gym.envs.registration")
    except ImportError:
        gym = types.ModuleType("gym")
        envs = types.ModuleType("gym.envs")
        registration = types.ModuleType("gym.envs.registration")

        def register(*_args: object, **_kwargs: object) -> None:
            """No-op: the Gym environment is never used."""

        registration.register = register  # type: ignore[attr-defined]
        gym.envs = envs  # type: ignore[attr-defined]
        envs.registration = registration  # type: ignore[attr-defined]
        sys.modules.update({"gym": gym, "gym.envs": envs, "gym.envs.registration": registration})
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        pkg = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            return str(importlib.resources.files(package).joinpath(resource))

        pkg.resource_filename = resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = pkg


def import_simglucose() -> dict[str, Any]:
    """Import the simglucose pieces we use.

    Raises:
        ImportError: simglucose is not installed (``pip install simglucose==0.2.11``).
    """
    _install_shims()
    # simglucose logs every meal and bolus at INFO (tens of thousands of lines per cohort), which buries
    # simulate_cohort's progress bar; its warnings still show.
    logging.getLogger("simglucose").setLevel(logging.WARNING)
    t1d = importlib.import_module("simglucose.patient.t1dpatient")
    cgm = importlib.import_module("simglucose.sensor.cgm")
    pump = importlib.import_module("simglucose.actuator.pump")
    ctrl = importlib.import_module("simglucose.controller.basal_bolus_ctrller")
    return {
        "T1DPatient": t1d.T1DPatient,
        "PatientAction": t1d.Action,
        "CGMSensor": cgm.CGMSensor,
        "InsulinPump": pump.InsulinPump,
        "BBController": ctrl.BBController,
    }


@dataclass(frozen=True)
class Meal:
    minute: int  # minutes since the start of the simulation
    carbs_g: float
    bolus_factor: float  # estimated/true carbohydrate; 0 = bolus forgotten
    bolus_delay_min: int  # minutes after the meal start when the bolus is given


def _meal_plan(rng: np.random.Generator, day: int, carb_scale: float) -> list[Meal]:
    """One day's meals: three main meals (each skipped with p=0.05) and up to three snacks.

    Times, sizes and the patient's behaviour are randomised; the spreads are
    deliberately wider than simglucose's ``RandomScenario`` so the forecaster sees
    unannounced snacks, mis-counted meals and late or missed boluses.
    """
    slots = [
        # (probability, earliest h, latest h, mean g, sd g, is_snack)
        (0.95, 6.0, 9.5, 50.0, 15.0, False),
        (0.35, 9.5, 11.5, 20.0, 8.0, True),
        (0.95, 11.5, 14.5, 65.0, 20.0, False),
        (0.40, 14.5, 17.0, 20.0, 8.0, True),
        (0.95, 17.0, 20.5, 75.0, 22.0, False),
        (0.30, 20.5, 23.0, 20.0, 8.0, True),
    ]
    meals = []
    for prob, lo, hi, mean, sd, snack in slots:
        if rng.random() >= prob:
            continue
        minute = int(day * 1440 + rng.uniform(lo, hi) * 60)
        carbs = float(max(5.0, rng.normal(mean, sd)) * carb_scale)
        if snack and rng.random() < 0.5:
            factor = 0.0  # snacks often go unbolused
        elif rng.random() < 0.08:
            factor = 0.0  # forgotten meal bolus
        else:
            factor = float(np.exp(rng.normal(0.0, 0.2)))  # carbohydrate-counting error
        delay = int(rng.choice([0, 0, 0, 0, 10, 20, 30]))
        meals.append(Meal(minute=minute, carbs_g=round(carbs), bolus_factor=factor, bolus_delay_min=delay))
    return meals


class _FastParams:
    """Patient parameters as plain float attributes.

    simglucose's ODE right-hand side reads ~40 parameters per call from a pandas
    Series; attribute access on a Series dominates the run time. The values are
    identical, only the container changes (about 4x faster).
    """

    def __init__(self, series: pd.Series) -> None:
        for key, value in series.items():
            setattr(self, str(key).strip(), value)


def subject_id(name: str, scenario: Scenario = RANDOMISED) -> str:
    """The cohort's subject id for simglucose patient ``name`` under ``scenario``; :func:`patient_name` inverts it."""
    return f"sim-{name}{PUBLISHED_SUFFIX if scenario == PUBLISHED else ''}"


def patient_name(subject: str) -> str:
    """The simglucose patient behind a simulated subject id or bank key (either scenario), e.g. ``adult#001``."""
    return subject.split("/")[-1].removeprefix("sim-").removesuffix(PUBLISHED_SUFFIX)


def _devices(sg: dict[str, Any], name: str, rng: np.random.Generator, sensor_name: str) -> tuple[Any, Any, Any]:
    """simglucose's patient (random initial state), sensor and pump, seeded from ``rng``."""
    patient = sg["T1DPatient"].withName(name, random_init_bg=True, seed=int(rng.integers(2**31)))
    sensor = sg["CGMSensor"].withName(sensor_name, seed=int(rng.integers(2**31)))
    return patient, sensor, sg["InsulinPump"].withName(PUMP_NAME)


def _reading(time: datetime, cgm: float, carbs_g: float, insulin_u: float, insulin_decimals: int = 2) -> tuple[str, float, float, float]:
    """One output row: rounded and clamped like a real sensor export; boluses to 0.01 U."""
    glucose = float(np.clip(round(cgm), SENSOR_LOW, SENSOR_HIGH))
    return time.strftime("%Y-%m-%d %H:%M:%S"), glucose, round(carbs_g, 1), round(insulin_u, insulin_decimals)


def _frame(rows: list[tuple[str, float, float, float]], subject: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["timestamp", "glucose_mg_dl", "carbs_g", "insulin_u"])
    frame.insert(0, "subject_id", subject)
    return frame


def simulate_patient(
    name: str, days: float, seed: int, on_minute: Callable[[int], None] | None = None
) -> pd.DataFrame:
    """Simulate one virtual patient with the basal-bolus controller.

    Args:
        name: a simglucose patient name, e.g. ``"adult#001"``.
        days: length of the simulation (may be fractional, e.g. 0.25).
        seed: seeds meals, behaviour, initial glucose and sensor noise.
        on_minute: called every simulated minute (progress bars).

    Returns:
        Frame with ``subject_id,timestamp,glucose_mg_dl,carbs_g,insulin_u``, one row per
        5-minute reading.
    """
    sg = import_simglucose()
    rng = np.random.default_rng(seed)
    patient, sensor, pump = _devices(sg, name, rng, SENSOR_NAME)
    patient._params = _FastParams(patient._params)
    controller = sg["BBController"]()
    action_cls = sg["PatientAction"]
    # Children eat less; scale meals by body weight relative to an adult (capped).
    carb_scale = float(np.clip(float(patient._params.BW) / 75.0, 0.45, 1.1))
    n_minutes = round(days * 1440)
    n_days = int(np.ceil(days))
    meals = [m for d in range(n_days) for m in _meal_plan(rng, d, carb_scale)]
    eat_at = {m.minute: m for m in meals}
    bolus_at: dict[int, Meal] = {m.minute + m.bolus_delay_min: m for m in meals if m.bolus_factor > 0}
    # Day-to-day basal requirement drift (illness, activity): +-10%.
    basal_factor = np.exp(rng.normal(0.0, 0.1, size=n_days + 1))
    base_basal = controller._bb_policy(name, 0.0, 120.0, 1).basal  # U/min, steady state
    correction_factor = float(controller.quest.loc[controller.quest.Name == name, "CF"].iloc[0])  # mg/dL per U
    last_rescue = -10_000
    last_bolus = -10_000
    next_correction_check = 0
    cgm = sensor.measure(patient)
    rows: list[tuple[str, float, float, float]] = []
    carbs_acc = 0.0
    bolus_acc = 0.0
    for minute in range(n_minutes):
        carbs = 0.0
        meal = eat_at.get(minute)
        if meal is not None:
            carbs += meal.carbs_g
        # Rescue carbohydrates: 15 g when the sensor reads below 70, at most every 20 min.
        if cgm < 70 and minute - last_rescue >= 20:
            carbs += 15.0
            last_rescue = minute
        bolus_u = 0.0
        dose = bolus_at.get(minute)
        if dose is not None:
            # BBController: estimated carbs / CR + correction above 150 mg/dL (units U).
            action = controller._bb_policy(name, dose.carbs_g * dose.bolus_factor, cgm, 1)
            bolus_u = float(pump.bolus(action.bolus))
        elif (cgm > CORRECTION_ABOVE_MGDL and minute - last_bolus >= CORRECTION_GAP_MINUTES
              and minute >= next_correction_check):
            next_correction_check = minute + 60
            if rng.random() < CORRECTION_PROBABILITY:
                # BBController's correction term on its own (it adds it only to meal boluses).
                bolus_u = float(pump.bolus((cgm - controller.target) / correction_factor))
        if bolus_u > 0:
            last_bolus = minute
        basal_u = float(pump.basal(base_basal * basal_factor[minute // 1440]))
        patient.step(action_cls(CHO=carbs, insulin=basal_u + bolus_u))
        cgm = sensor.measure(patient)
        carbs_acc += carbs
        bolus_acc += bolus_u
        if (minute + 1) % SAMPLE_MINUTES == 0:
            rows.append(_reading(START + timedelta(minutes=minute + 1), cgm, carbs_acc, bolus_acc))
            carbs_acc = 0.0
            bolus_acc = 0.0
        if on_minute is not None:
            on_minute(minute)
    return _frame(rows, subject_id(name))


def simulate_patient_published(
    name: str, days: float, seed: int, sensor_name: str = SENSOR_NAME, log_basal: bool = False,
) -> pd.DataFrame:
    """Simulate one virtual patient exactly as simglucose publishes it: ``T1DSimEnv`` with ``RandomScenario``
    (its meal times and sizes), ``BBController`` (a bolus with every meal, the exact carbohydrate count, no
    treatment of lows) and the Insulet pump.

    Args:
        name, days: as :func:`simulate_patient`.
        seed: as :func:`simulate_patient`, through a random stream of its own: the same patient and seed
            under the two scenarios share no initial state, sensor noise or meals.
        sensor_name: a simglucose sensor; GuardianRT (the default, training) reads every 5 minutes,
            Dexcom every 3.
        log_basal: write basal + bolus insulin in ``insulin_u`` (a pump's total delivery) instead of the
            bolus alone (the default, as in the randomised days). For robustness checks: the reader
            removes such a basal floor (``data.without_basal_floor``).

    Returns:
        Frame in the shared format, one row per sensor reading; subject ids end in ``-published``.
    """
    sg = import_simglucose()
    env_module = importlib.import_module("simglucose.simulation.env")
    scenario_module = importlib.import_module("simglucose.simulation.scenario_gen")
    rng = np.random.default_rng([seed, PUBLISHED_VERSION])
    patient, sensor, pump = _devices(sg, name, rng, sensor_name)
    scenario = scenario_module.RandomScenario(start_time=START, seed=int(rng.integers(2**31)))
    env = env_module.T1DSimEnv(patient, sensor, pump, scenario)
    controller = sg["BBController"]()
    observation, reward, done, info = env.reset()
    # After reset, which reads the parameters as a pandas Series once more.
    patient._params = _FastParams(patient._params)
    step_minutes = int(env.sample_time)
    rows: list[tuple[str, float, float, float]] = []
    for _ in range(round(days * 1440 / step_minutes)):
        action = controller.policy(observation, reward, done, **info)
        observation, reward, done, info = env.step(action)
        # env.step holds the action for every minute of the step and logs per-minute means.
        insulin_u = (env.insulin_hist[-1] if log_basal else float(pump.bolus(action.bolus))) * step_minutes
        # A basal of a few hundredths of a unit per step needs the third decimal.
        rows.append(_reading(env.time, observation.CGM, env.CHO_hist[-1] * step_minutes, insulin_u,
                             insulin_decimals=3 if log_basal else 2))
    return _frame(rows, subject_id(name, PUBLISHED))


@cache
def _quest_table() -> pd.DataFrame:
    """simglucose's patient table (name, age, carbohydrate ratio...), read once per process."""
    import_simglucose()  # its package import needs the shims
    return pd.read_csv(importlib.resources.files("simglucose").joinpath("params/Quest.csv"))


def patient_metadata(subject: str) -> dict[str, str]:
    """Metadata row in the shared ``<cohort>-metadata.csv`` style for one simulated subject id."""
    quest = _quest_table()
    name = patient_name(subject)
    row = quest.loc[quest.Name == name].iloc[0]
    return {
        "person_id": subject,
        "age_group": name.split("#")[0],
        "age": str(int(row.Age)),
        "diabetes_type": "T1D (simulated)",
        "source": "simglucose 0.2.11 (UVA/Padova 2008)",
    }


def _simulate_to_file(
    name: str, days: float, patient_seed: int, path: Path, scenario: Scenario, sensor_name: str, log_basal: bool,
) -> None:
    if scenario == PUBLISHED:
        frame = simulate_patient_published(name, days, patient_seed, sensor_name, log_basal)
    else:
        frame = simulate_patient(name, days, patient_seed)
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def iter_cohort(
    names: tuple[str, ...], days: float, seed: int, cache_dir: Path, jobs: int = 1, scenario: Scenario = RANDOMISED,
    sensor_name: str = SENSOR_NAME, log_basal: bool = False,
) -> Iterator[tuple[str, Path, bool]]:
    """Simulate each patient into ``cache_dir/patients/<scenario, days, seed>/<name>.csv`` unless already cached.

    ``scenario`` is RANDOMISED (:func:`simulate_patient`) or PUBLISHED (:func:`simulate_patient_published`,
    which alone takes ``sensor_name`` and ``log_basal``).

    Yields (name, path, was_cached) as each patient is ready: cached ones first, then the rest in
    the order they finish (``jobs`` processes at a time). Per-patient files make an interrupted run
    resumable, and each patient's seed depends only on (seed, patient), so the files do not depend on
    ``jobs`` or on which patients were asked for.

    Raises:
        ValueError: an unknown scenario, or a sensor or basal logging asked of the randomised days.
    """
    if scenario == RANDOMISED:
        if sensor_name != SENSOR_NAME or log_basal:
            raise ValueError("the randomised days always use GuardianRT and log bolus insulin only")
        kind = f"scenario{SCENARIO_VERSION}"
    elif scenario == PUBLISHED:
        kind = f"{PUBLISHED}{PUBLISHED_VERSION}-{sensor_name}-{'total' if log_basal else 'bolus'}-insulin"
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    part_dir = cache_dir / "patients" / f"{kind}-days{days:g}-seed{seed}"
    part_dir.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[str, int, Path]] = []
    for name in names:
        path = part_dir / f"{name.replace('#', '_')}.csv"
        if path.exists():
            yield name, path, True
        else:
            todo.append((name, seed * 1000 + PATIENT_NAMES.index(name), path))
    if jobs <= 1:
        for name, patient_seed, path in todo:
            _simulate_to_file(name, days, patient_seed, path, scenario, sensor_name, log_basal)
            yield name, path, False
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        running = {pool.submit(_simulate_to_file, name, days, patient_seed, path, scenario, sensor_name, log_basal): (name, path)
                   for name, patient_seed, path in todo}
        for done in as_completed(running):
            done.result()
            yield *running[done], False


def assemble_cohort(paths: list[Path], cache_dir: Path) -> tuple[Path, Path]:
    """Concatenate per-patient files into ``simglucose.csv.gz`` + ``simglucose-metadata.csv`` (one metadata
    row per subject id, so a patient simulated under both scenarios has two)."""
    frame = pd.concat([pd.read_csv(p, dtype={"subject_id": str, "timestamp": str}) for p in paths], ignore_index=True)
    out = cache_dir / f"{SIM_COHORT}.csv.gz"
    frame.to_csv(out, index=False, compression="gzip")
    meta = pd.DataFrame([patient_metadata(sid) for sid in frame["subject_id"].drop_duplicates()])
    meta_path = cache_dir / f"{SIM_COHORT}-metadata.csv"
    meta.to_csv(meta_path, index=False)
    return out, meta_path


def load_sim_cohort(cache_dir: str | Path) -> dict[str, Any]:
    """Read the cached cohort as ``{"simglucose/<id>": SubjectReadings}`` with its metadata rows.

    Raises:
        FileNotFoundError: the cohort has not been generated (``manage.py simulate_cohort``).
    """
    from forecasting.ml.data import read_cgm_csv, read_metadata

    cache_dir = Path(cache_dir)
    path = cache_dir / f"{SIM_COHORT}.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"simulated cohort not found: {path} (run `python manage.py simulate_cohort`)")
    meta_path = cache_dir / f"{SIM_COHORT}-metadata.csv"
    meta = read_metadata(meta_path) if meta_path.exists() else {}
    out: dict[str, Any] = {}
    for sid, readings in read_cgm_csv(path, cohort=SIM_COHORT).items():
        readings.info = meta.get(sid, {})
        if sid.endswith(PUBLISHED_SUFFIX):
            # Its own cohort label, so that the evaluation reports the two scenarios apart.
            readings.cohort = f"{SIM_COHORT} {PUBLISHED}"
        out[f"{SIM_COHORT}/{sid}"] = readings
    return out


def split_sim_subjects(keys: list[str], seed: int = 0, n_test: int = 2, n_val: int = 1) -> dict[str, list[str]]:
    """Split virtual patients, stratified by age group: per group ``n_test`` test, ``n_val`` val patients.

    The unit is the patient, not the subject id: a patient simulated under both scenarios goes to one side
    with both. The patients on each side are those of earlier versions (the same draws); each side lists
    its subject ids sorted (earlier versions listed them in draw order, which training reads them in).
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for group in AGE_GROUPS:
        patients = sorted({patient_name(k) for k in keys if patient_name(k).startswith(group)})
        patients = [patients[i] for i in rng.permutation(len(patients))]
        for part, chosen in (("test", patients[:n_test]), ("val", patients[n_test : n_test + n_val]),
                             ("train", patients[n_test + n_val :])):
            out[part] += sorted(k for k in keys if patient_name(k) in chosen)
    return out
