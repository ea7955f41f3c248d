"""Django settings of the benchmark.

Default: PostgreSQL ``dy_bench`` + Redis db 10 (broker) / db 11 (result
backend and the worker probes' figures); ``BENCH_DATABASE_URL``,
``BENCH_BROKER_URL`` and ``BENCH_RESULT_BACKEND`` change them. The admin is
installed so the benchmark can render a large workflow's page.
"""

import os

import dj_database_url

SECRET_KEY = "bench-only"
DEBUG = False  # DEBUG would keep every query in memory
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
ROOT_URLCONF = "bench.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_celery_results",
    "django_dyrygent",
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
STATIC_URL = "/static/"

# Persistent connections, as a tuned production worker has them: with 0 the
# Celery Django fixup closes the connection after every task and each node
# pays a new PostgreSQL connection. BENCH_CONN_MAX_AGE=0 measures that case.
CONN_MAX_AGE = int(os.environ.get("BENCH_CONN_MAX_AGE", "600"))
# Celery's Django fixup closes every connection before and after each task
# (whatever CONN_MAX_AGE says) unless CELERY_DB_REUSE_MAX is set; then it
# closes them once every that many tasks. BENCH_DB_REUSE_MAX sets it.
if os.environ.get("BENCH_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = int(os.environ["BENCH_DB_REUSE_MAX"])

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dy_bench"),
        conn_max_age=CONN_MAX_AGE,
    )
}
CELERY_BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/10")
CELERY_RESULT_BACKEND = os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/11")

CELERY_TASK_DEFAULT_QUEUE = "dyrygent-bench"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Progress is event driven; the tick is only the safety net (library default).
DYRYGENT_TICK_INTERVAL = 10.0
# BENCH_PREPARED_STATEMENTS=0: the hot path without its prepared statement (an A/B of that lever).
DYRYGENT_PREPARED_STATEMENTS = os.environ.get("BENCH_PREPARED_STATEMENTS", "1") == "1"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_dyrygent": {"handlers": ["console"], "level": "WARNING"},
        # celery-dyrygent logs every tick at INFO.
        "celery_dyrygent": {"handlers": ["console"], "level": "WARNING"},
    },
}
