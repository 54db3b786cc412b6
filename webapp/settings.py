"""The one settings module. Every value an operator may change comes from an environment variable.

Defaults are the embedded local set-up: SQLite and a file-system message broker under one data
directory, bound to localhost. Production sets DATABASE_URL, BROKER_URL, SECRET_KEY,
ALLOWED_HOSTS and the directories (see docker-compose.yml).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from webapp.env import env_bool, env_int, env_list, env_path, env_str, secret_key_from

BASE_DIR = Path(__file__).resolve().parent.parent

# Everything the embedded default writes lives under one directory.
DATA_DIR = env_path("DATA_DIR", BASE_DIR / "data")
MODEL_STORE_DIR = env_path("MODEL_STORE_DIR", DATA_DIR / "models")
EXPORT_DIR = env_path("EXPORT_DIR", DATA_DIR / "exports")

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = secret_key_from(DATA_DIR)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_HTTPS_PROXY", False) else None
)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
# Served over HTTPS (docker-compose.yml turns these on): plain HTTP is redirected, except the
# health check that the containers call inside their network, and browsers are told to use HTTPS
# only (HSTS) for HSTS_SECONDS. Off by default: the embedded default serves plain HTTP.
SECURE_SSL_REDIRECT = env_bool("HTTPS_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", True)
# Content-Security-Policy (django-csp), on everywhere: scripts, styles, fonts and requests from
# this site only, so an injected <script>, event handler or javascript: link does not run. htmx
# needs nothing inline (its configuration is a JSON meta tag, it evaluates no code and adds no
# style element, see base.html). Style *attributes* are allowed: the bars of the quality and
# leaderboard pages are sized with them, and a style attribute cannot run code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "webapp.accounts",
    "webapp.core",
    "webapp.annotation",
    "webapp.exports",
    "webapp.training",
    "ninja",  # the API docs page's scripts, served as our static files instead of from a CDN
    "webapp.api",
    "axes",
    "csp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a lock-out flagged during the request into its page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "webapp" / "templates"],
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


def _database(url: str) -> dict[str, Any]:
    try:
        config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=60))
    except ValueError as error:
        raise ImproperlyConfigured(f"DATABASE_URL is not a database URL we know: {error}") from None
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # The embedded default: a web server and a worker share one file, so wait for locks
        # instead of failing, and take the write lock at the start of each transaction.
        config["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
        config["CONN_MAX_AGE"] = 0
    else:
        config["CONN_HEALTH_CHECKS"] = True
    return config


DATABASES = {"default": _database(env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"
# Log-in throttling (webapp/accounts/throttling.py): django-axes refuses a sign-in, even with the
# right password, once an account or an address has this many failures within the cool-off
# time, counted from the last failure. The counts are database rows, shared by every process.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "webapp.accounts.throttling.client_ip"
AXES_LOCKOUT_CALLABLE = "webapp.accounts.throttling.locked_out"
AXES_DISABLE_ACCESS_LOG = True  # failures only: no row for every successful sign-in
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "webapp" / "static"]
STATIC_ROOT = env_path("STATIC_ROOT", DATA_DIR / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if env_bool("STATIC_MANIFEST", True)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Celery: one app (webapp.celery_app), two queues. `default` runs CPU work (exports, statistics);
# `gpu` runs training and generation, one task at a time per GPU.
BROKER_URL = env_str("BROKER_URL", "filesystem://")
CELERY_BROKER_URL = BROKER_URL
if BROKER_URL.startswith("filesystem://"):
    # The embedded broker needs no server: messages are files under the data directory.
    _broker_dir = DATA_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
        "processed_folder": str(_broker_dir / "processed"),
        "polling_interval": 0.2,
    }
elif BROKER_URL.startswith(("redis://", "rediss://")):
    # With acks_late, Redis redelivers a task whose worker has not acknowledged it within the
    # visibility timeout; training rounds run for hours, so the timeout must outlast them.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("BROKER_VISIBILITY_TIMEOUT", 24 * 3600, minimum=60)
    }
else:
    raise ImproperlyConfigured(
        f"BROKER_URL must start with filesystem:// or redis://, got {BROKER_URL!r}."
    )
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "training.*": {"queue": "gpu"},
    "generation.*": {"queue": "gpu"},
    "system.probe_gpu": {"queue": "gpu"},
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True  # tasks write their results and progress to the database
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The reconciler (webapp/training/rounds.py) runs every minute through celery beat: it fails a
# RUNNING round whose worker stopped its heartbeat and re-sends a QUEUED round nobody took.
CELERY_BEAT_SCHEDULE = {
    "reconcile-training-rounds": {"task": "maintenance.reconcile_rounds", "schedule": 60.0}
}
# A running round's worker writes a heartbeat every few seconds; this long without one and
# the round is failed (the worker died); a queued round is sent again after this long.
TRAINING_HEARTBEAT_TIMEOUT_SECONDS = env_int("TRAINING_HEARTBEAT_TIMEOUT_SECONDS", 120, minimum=5)
TRAINING_HEARTBEAT_EVERY_SECONDS = env_int("TRAINING_HEARTBEAT_EVERY_SECONDS", 10, minimum=1)
TRAINING_RESEND_AFTER_SECONDS = env_int("TRAINING_RESEND_AFTER_SECONDS", 600, minimum=5)

# One cache shared by every web process: sessions are read from it (written through to the
# database, so a restart logs nobody out) and the API's rate limits count in it. A per-process
# memory cache would let a session logged out in one process live on in another, and would
# multiply the rate limit by the number of processes. Redis when CACHE_URL names it (a Redis
# BROKER_URL is the default); files under DATA_DIR in the embedded default.
CACHE_URL = env_str(
    "CACHE_URL", BROKER_URL if BROKER_URL.startswith(("redis://", "rediss://")) else "file://"
)
if CACHE_URL.startswith(("redis://", "rediss://")):
    _cache: dict[str, Any] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": "rlhf-cache",  # apart from Celery's keys on a shared server
    }
elif CACHE_URL == "file://":
    _cache = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "cache"),
    }
else:
    raise ImproperlyConfigured(
        f"CACHE_URL must be file:// or start with redis://, got {CACHE_URL!r}."
    )
CACHES = {"default": _cache}
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# Calls one API token may make per minute (webapp/api/security.py).
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 120, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
