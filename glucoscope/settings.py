"""GlucoScope settings. Every value comes from the environment (see .env.example).

Production mode is `DEBUG=false` (the default): it requires SECRET_KEY and turns on
the HTTPS settings checked by `manage.py check --deploy`.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from glucoscope.env import env_bool, env_int, env_list, env_str
from glucoscope.observability.logs import logging_config as _logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = env_bool("DEBUG", False)

_secret_key = env_str("SECRET_KEY")
if not _secret_key:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is false (production mode). "
            "Set SECRET_KEY or SECRET_KEY_FILE, or DEBUG=true for local development."
        )
    _secret_key = "insecure-development-key-only-for-debug-mode-0123456789abcdef"
SECRET_KEY: str = _secret_key

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "rest_framework_api_key",
    "drf_spectacular",
    "glucoscope.patients",
    "glucoscope.readings",
    "glucoscope.audit",
    "api",
    "forecasting",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "api.middleware.RequestBodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Audit log of PHI access (glucoscope/audit): one INSERT per request that touched a patient's data.
    "glucoscope.audit.middleware.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "glucoscope.urls"
WSGI_APPLICATION = "glucoscope.wsgi.application"
ASGI_APPLICATION = "glucoscope.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = env_str("DATABASE_URL")
if not _database_url:
    VAR_DIR.mkdir(exist_ok=True)
DATABASES = {
    "default": dj_database_url.parse(
        _database_url or f"sqlite:///{VAR_DIR / 'glucoscope.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
DATABASE_IS_POSTGRES = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if not DATABASE_IS_POSTGRES:
    # SQLite is the single-user development default; a generous lock timeout keeps
    # the in-process task runner from tripping over the request that enqueued it.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "patients.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Redis, cache and Celery -------------------------------------------------
REDIS_URL = env_str("REDIS_URL") or ""

if REDIS_URL:
    # Fails open (glucoscope/cache.py): the cache holds only disposable state, so a Redis outage
    # pauses throttling instead of failing every request; short timeouts keep a hung Redis from stalling them.
    CACHES = {"default": {
        "BACKEND": "glucoscope.cache.FailOpenRedisCache", "LOCATION": REDIS_URL,
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Without a broker, tasks run in-process right after the commit that enqueued them.
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
# GUIDE.md §9: acknowledge after the work is done, so a killed worker's task is redelivered;
# this is safe only because every task is idempotent.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection before and after every task unless this
# is set; a fresh PostgreSQL connection per task (a forked backend, authentication and the
# per-connection staging table) cost more CPU than the tasks themselves under the load test.
# Workers now keep connections as web requests do, recycled by glucoscope/database_connections.py
# according to DATABASE_CONN_MAX_AGE and the health checks.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 60)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 90)
# Must exceed the longest task, countdown or ETA, or Redis redelivers tasks still running.
# The fault tests shorten it so a restarted worker takes back a killed worker's task in seconds.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT_SECONDS", 3600), "socket_connect_timeout": 2, "socket_timeout": 5}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "ingest"
CELERY_TASK_ROUTES = {
    # Long periodic jobs get a queue of their own, so a forecast after an ingest never waits behind a
    # night's glucotype fit or a day's personalisation of every due patient. Exact names win over globs.
    "forecasting.stratify_glucotypes": {"queue": "batch"},
    "forecasting.sweep_personalisation": {"queue": "batch"},
    "forecasting.personalise_patient": {"queue": "batch"},
    "readings.*": {"queue": "ingest"},
    "forecasting.*": {"queue": "forecasting"},
    "notifications.*": {"queue": "notifications"},
}
CELERY_BEAT_SCHEDULE = {
    "readings.sweep_outbox": {"task": "readings.sweep_outbox", "schedule": 60.0},
    "forecasting.sweep_stale": {"task": "forecasting.sweep_stale", "schedule": 300.0},
}
# The stage that follows the summary refresh after every ingest; it releases the outbox rows.
AFTER_INGEST_TASK = env_str("AFTER_INGEST_TASK", "forecasting.tasks.forecast_patients")
# Patients per processing task: a vendor batch for 100 patients is one publish, a task also takes
# up to this many patients whose tasks are still queued, and the forecaster runs batched across them.
OUTBOX_PATIENTS_PER_TASK = env_int("OUTBOX_PATIENTS_PER_TASK", 100)
# How long an enqueued outbox row may stay unprocessed before the sweeper enqueues it again.
OUTBOX_STALE_AFTER = timedelta(seconds=env_int("OUTBOX_STALE_AFTER_SECONDS", 120))
# While one processing task waits in the queue, new claims send none (it takes them); this bounds
# how long a flag left by a lost task holds back new tasks (glucoscope/readings/services.py).
OUTBOX_WAKE_FLAG_SECONDS = env_int("OUTBOX_WAKE_FLAG_SECONDS", 10)

# --- REST API ----------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "api.authentication.VendorApiKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.IsPerson"],
    "DEFAULT_PARSER_CLASSES": ["api.parsers.OrjsonParser"],
    "DEFAULT_RENDERER_CLASSES": ["api.renderers.OrjsonRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "DEFAULT_SCHEMA_CLASS": "api.schema.GlucoScopeAutoSchema",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("THROTTLE_ANON_RATE", "120/min"),
        "user": env_str("THROTTLE_USER_RATE", "6000/min"),
        "login": env_str("THROTTLE_LOGIN_RATE", "20/min"),
    },
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env_int("ACCESS_TOKEN_MINUTES", 15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env_int("REFRESH_TOKEN_DAYS", 14)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "SIGNING_KEY": SECRET_KEY,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "GlucoScope API",
    "DESCRIPTION": "CGM ingest, read-back and the Nightscout-compatible API. Glucose is stored in mg/dL.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Keep the enum hook (the default) and restore `$` in FHIR operation paths (api/schema.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.postprocess_literal_dollar_paths"],
    "ENUM_NAME_OVERRIDES": {
        "GlucoseUnitEnum": ["mg/dL", "mmol/L"],
        # /readyz: database, redis and model checks share one set of states.
        "ReadinessCheckStateEnum": "api.health.CHECK_STATES",
    },
}

# Resource limits (GUIDE.md §11). Bodies are measured after gzip decoding as well.
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 16 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
MAX_BATCH_ITEMS = env_int("MAX_BATCH_ITEMS", 10_000)
READINGS_MAX_RANGE_DAYS = env_int("READINGS_MAX_RANGE_DAYS", 90)
READINGS_MAX_PAGE_SIZE = env_int("READINGS_MAX_PAGE_SIZE", 2000)

# --- Production hardening (checked by `manage.py check --deploy`) ------------
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Logging and metrics (issue 6 §4; docs/scaling.md) -----------------------
# Every line carries the request id (X-Request-ID) and, in workers, the task id and the id of the
# request that caused the task. JSON (one object per line) in production, plain text in DEBUG.
LOG_FORMAT = (env_str("LOG_FORMAT") or ("plain" if DEBUG else "json")).lower()
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use json or plain")
LOGGING = _logging_config(log_format=LOG_FORMAT, level=env_str("LOG_LEVEL", "INFO") or "INFO")
MIDDLEWARE.insert(0, "glucoscope.observability.middleware.RequestObservabilityMiddleware")
# /metrics answers only these source addresses (REMOTE_ADDR, never X-Forwarded-For) or METRICS_BEARER_TOKEN.
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
try:
    for _entry in METRICS_ALLOWED_IPS:
        ipaddress.ip_network(_entry, strict=False)
except ValueError as _exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {_exc}") from _exc
METRICS_BEARER_TOKEN = env_str("METRICS_BEARER_TOKEN") or ""
if METRICS_BEARER_TOKEN and len(METRICS_BEARER_TOKEN) < 32:
    raise ImproperlyConfigured("METRICS_BEARER_TOKEN must be at least 32 characters")
# Probes and scrapers on loopback speak plain HTTP; everything else is redirected to HTTPS.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

# Forecasting: the model shipped in the repository is registered and activated on first use.
FORECASTER_DEFAULT_ARTIFACT = "forecasting/artifacts/forecaster.json"
# Probability of <70 mg/dL within 30 min at which a `predicted_low` event is raised. A product
# setting, not a clinical threshold: tune it against the false-alert figures in docs/forecasting.md.
PREDICTED_LOW_RISK_THRESHOLD = float(env_str("PREDICTED_LOW_RISK_THRESHOLD", "0.5") or 0.5)

# The team's shared CGM data (see ../shared/data/README.md); commands skip it when absent.
SHARED_DATA_DIR = Path(env_str("SHARED_DATA_DIR") or BASE_DIR.parent / "shared" / "data")

# --- Notifications (issue 5; see docs/notifications.md) ------------------------------------
# A Firebase service-account JSON. Unset means push delivery is off: notifications are still
# recorded, with the status `not_configured`.
FIREBASE_CREDENTIALS_FILE = env_str("FIREBASE_CREDENTIALS_FILE") or ""
# Base URL of the FCM v1 API; point it at an emulator or a stub server in tests.
FCM_ENDPOINT = (env_str("FCM_ENDPOINT") or "https://fcm.googleapis.com").rstrip("/")
# Seconds per FCM HTTP call: a stuck connection must not hold a worker (firebase-admin's default is 120).
FCM_HTTP_TIMEOUT_SECONDS = env_int("FCM_HTTP_TIMEOUT_SECONDS", 10)
# QUOTA_EXCEEDED/UNAVAILABLE: attempts inside one send, then the row is re-queued with a delay.
FCM_MAX_ATTEMPTS = env_int("FCM_MAX_ATTEMPTS", 4)
NOTIFICATION_MAX_SEND_ATTEMPTS = env_int("NOTIFICATION_MAX_SEND_ATTEMPTS", 8)
# No glucose values or reminder text in the push payload unless this is true; the app fetches details.
PUSH_INCLUDE_DETAILS = env_bool("PUSH_INCLUDE_DETAILS", False)
# Non-urgent pushes per patient per local day (urgent lows and escalations are never capped).
PUSH_MAX_PER_PATIENT_PER_DAY = env_int("PUSH_MAX_PER_PATIENT_PER_DAY", 24)
# Diet tips per patient per day, at most (the patient may choose fewer); no tip this close to an alert.
TIPS_MAX_PER_DAY = env_int("TIPS_MAX_PER_DAY", 2)
TIP_ALERT_GAP_MINUTES = env_int("TIP_ALERT_GAP_MINUTES", 60)
CELERY_BEAT_SCHEDULE.update({
    "notifications.sweep": {"task": "notifications.sweep", "schedule": 60.0},
    "notifications.fire_reminders": {"task": "notifications.fire_reminders", "schedule": 60.0},
    "notifications.send_tips": {"task": "notifications.send_tips", "schedule": 900.0},
})

# --- Clinical analytics and the care-team pages (issue 4) ---------------------
INSTALLED_APPS += ["glucoscope.web"]
# `manage.py loadtest` (issue 6, docs/benchmarks.md "Load test"): no models, only the command.
INSTALLED_APPS += ["glucoscope.loadtest"]
# Nightly glucotype stratification of every patient with enough data (Hall et al., PLoS Biol 2018).
CELERY_BEAT_SCHEDULE["forecasting.stratify_glucotypes"] = {"task": "forecasting.stratify_glucotypes", "schedule": 86400.0}
# Per-patient output layers (docs/forecasting.md, "Personalisation"): tuned on the last 28 days once a
# patient has 7 days of readings, and again every 7 days; the sweep that queues them runs daily.
PERSONALISATION_HISTORY = timedelta(days=env_int("PERSONALISATION_HISTORY_DAYS", 28))
PERSONALISATION_REFRESH = timedelta(days=env_int("PERSONALISATION_REFRESH_DAYS", 7))
CELERY_BEAT_SCHEDULE["forecasting.sweep_personalisation"] = {"task": "forecasting.sweep_personalisation", "schedule": 86400.0}
LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:dashboard"
# The triage table's per-day range counts: recent days after ingest every 5 min, everything nightly.
CELERY_BEAT_SCHEDULE["forecasting.refresh_triage_counts"] = {"task": "forecasting.refresh_triage_counts", "schedule": 300.0}
CELERY_BEAT_SCHEDULE["forecasting.refresh_triage_counts_full"] = {
    "task": "forecasting.refresh_triage_counts", "schedule": 86400.0, "kwargs": {"full": True},
}

# --- Authentication, MFA and limits (issue 6; see docs/security.md) ------------------------
INSTALLED_APPS += ["axes", "django_otp", "django_otp.plugins.otp_totp"]
# django-otp marks a session verified after a TOTP code; it must run after the session user is known.
MIDDLEWARE.insert(MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
                  "django_otp.middleware.OTPMiddleware")
# django-axes turns a locked-out sign-in into api.auth.lockout_response; it must be last.
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
# AxesStandaloneBackend refuses a locked-out username+address before the password is even checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 10)
# Hours as a float (0.25 = 15 minutes); failures older than this are forgotten and the lockout ends.
AXES_COOLOFF_TIME = float(env_str("AXES_COOLOFF_HOURS", "0.25") or 0.25)
# Username and address together: a stolen-password guesser is stopped without letting anyone lock a
# clinician out from elsewhere by typing their username. The per-address login throttle bounds sprays.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "api.auth.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
# How many proxies in front of the app append to X-Forwarded-For. 0 (the default): the header is
# ignored, since a client could otherwise send any address and dodge per-address limits.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
AXES_CLIENT_IP_CALLABLE = "api.throttling.client_address"
# axes keeps only the failures; a row per successful token request would grow without bound.
AXES_DISABLE_ACCESS_LOG = True
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "GlucoScope")

REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"] = [
    # JWTAuthentication plus the per-user revocation check (token generation).
    "api.authentication.RevocableJWTAuthentication",
    "api.authentication.VendorApiKeyAuthentication",
]
# One budget per person, per vendor key, per Nightscout credential and per anonymous address.
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = [
    "api.throttling.AnonymousAddressThrottle",
    "api.throttling.PersonThrottle",
    "api.throttling.VendorKeyThrottle",
    "api.throttling.NightscoutCredentialThrottle",
]
REST_FRAMEWORK["NUM_PROXIES"] = TRUSTED_PROXY_COUNT  # type: ignore[assignment]  # the literal above holds no ints
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    **REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],  # type: ignore[dict-item]
    "vendor_key": env_str("THROTTLE_VENDOR_KEY_RATE", "600/min"),
    "nightscout": env_str("THROTTLE_NIGHTSCOUT_RATE", "600/min"),
}
