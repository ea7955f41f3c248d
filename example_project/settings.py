"""Settings of the example project.

With no environment variables it needs no server at all: SQLite, kombu's
file-system broker and the ``django-db`` result backend, all under ``var/``.
Point it at real services with ``DATABASE_URL``, ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` (e.g. PostgreSQL and Redis in production).
"""

import os
from pathlib import Path

import dj_database_url
import django

from django_dyrygent import filesystem_broker
from example_project.schedule import BEAT_SCHEDULE

BASE_DIR = Path(__file__).resolve().parent.parent
# Everything the embedded setup writes (database, broker folders); git-ignored.
VAR_DIR = Path(os.environ.get("DYRYGENT_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

# For local use only: set DJANGO_SECRET_KEY and DJANGO_DEBUG=0 anywhere else.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "django_dyrygent",
    "example_project.demo",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
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
            ]
        },
    }
]
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# -- database -----------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"), conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3") and django.VERSION >= (5, 1):
    # BEGIN IMMEDIATE takes SQLite's write lock up front, so the web process and
    # the worker processes queue for it (up to ``timeout`` seconds) instead of
    # failing with "database is locked" on a lock upgrade. WAL lets readers
    # (the progress page) read while a worker writes.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL;",
    }

# -- Celery ---------------------------------------------------------------------------

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://localhost/")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "django-db")
CELERY_RESULT_EXTENDED = True
CELERY_TASK_DEFAULT_QUEUE = "example-project"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup otherwise opens a new database connection for every
# task; each workflow node would pay it (check --deploy: django_dyrygent.W005).
CELERY_DB_REUSE_MAX = 1000
if CELERY_BROKER_URL.startswith("filesystem"):
    # kombu's file-system transport (one folder of message files is the queue),
    # patched to write messages atomically: see django_dyrygent/filesystem_broker.py.
    CELERY_BROKER_TRANSPORT = filesystem_broker.TRANSPORT
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker.transport_options(VAR_DIR / "broker")

# The sweeper and the nightly catalogue run: see schedule.py.
# Run beat beside the worker: celery -A example_project beat
CELERY_BEAT_SCHEDULE = BEAT_SCHEDULE

# -- django_dyrygent ------------------------------------------------------------------

# The demo's workflows take seconds; a short safety-net interval keeps the
# demo honest about what the tick does without slowing it (events drive it).
DYRYGENT_TICK_INTERVAL = float(os.environ.get("DYRYGENT_TICK_INTERVAL", "5"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_dyrygent": {"handlers": ["console"], "level": "WARNING"}},
}
