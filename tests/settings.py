"""Test settings: SQLite + file-system broker by default; DATABASE_URL / CELERY_BROKER_URL switch."""

import os
import tempfile
from pathlib import Path

import dj_database_url
import django

from django_dyrygent import filesystem_broker

BASE = Path(os.environ.get("DYRYGENT_TEST_DIR", Path(tempfile.gettempdir()) / "dyrygent-tests"))
BASE.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# The admin's CSS/JS (and the DAG's dag.css/dag.js) served by live_server in the browser test.
STATIC_URL = "/static/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    # The catalogue's database schedule is tested for real (test_catalogue_schedule.py).
    "django_celery_beat",
    "django_dyrygent",
    "tests",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{BASE / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["OPTIONS"] = {"timeout": 30}
    if django.VERSION >= (5, 1):  # Django 4.2 has no transaction_mode (check W001 says so)
        DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # A file, not :memory:, so worker threads and the test share one database.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE / "test-db.sqlite3")}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "django-db")
CELERY_BROKER_TRANSPORT_OPTIONS = {}
if CELERY_BROKER_URL.startswith("filesystem"):
    # kombu's own file-system transport can lose a message to a reader racing
    # its writer; this one writes atomically (see django_dyrygent/filesystem_broker.py).
    CELERY_BROKER_TRANSPORT = filesystem_broker.TRANSPORT
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker.transport_options(BASE / "broker", 0.02)
# A queue of its own per run (nox cells, engineers sharing one broker): DYRYGENT_TEST_QUEUE.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("DYRYGENT_TEST_QUEUE", "dyrygent-tests")
CELERY_RESULT_EXTENDED = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Long: stray countdown ticks of finished tests should rarely fire during later ones;
# tests that need a tick call engine.tick() themselves.
DYRYGENT_TICK_INTERVAL = 30.0
# The in-process worker of the suite shares the test database with tests that
# flush it; a sweeping thread there would act on other tests' rows. Liveness
# is exercised by tests/unit/test_liveness.py (direct calls) and tests/reliability/
# (subprocess workers, which switch it on through these variables).
DYRYGENT_LIVENESS = os.environ.get("DYRYGENT_LIVENESS", "0") == "1"
for _name in ("HEARTBEAT_INTERVAL", "WORKER_TIMEOUT", "SWEEP_INTERVAL", "OUTCOME_RETRY_FOR", "TICK_INTERVAL"):
    if os.environ.get(f"DYRYGENT_{_name}"):
        globals()[f"DYRYGENT_{_name}"] = float(os.environ[f"DYRYGENT_{_name}"])
if os.environ.get("DYRYGENT_LOST_WORKER_RETRIES"):
    DYRYGENT_LOST_WORKER_RETRIES = int(os.environ["DYRYGENT_LOST_WORKER_RETRIES"])
if os.environ.get("CELERY_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = int(os.environ["CELERY_DB_REUSE_MAX"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_dyrygent": {"handlers": ["console"], "level": "WARNING"}},
}
