"""A host project as a user would write it: django_dyrygent installed from the wheel.

SQLite and the package's own file-system broker, so the smoke test needs no server.
"""

import os
from pathlib import Path

from django_dyrygent import filesystem_broker

VAR = Path(os.environ["SMOKE_VAR_DIR"])
SECRET_KEY = "wheel-smoke-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "django_dyrygent",
    "smoke",
]
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
              "OPTIONS": {"context_processors": ["django.contrib.auth.context_processors.auth",
                                                 "django.contrib.messages.context_processors.messages",
                                                 "django.template.context_processors.request"]}}]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
STATIC_URL = "/static/"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(VAR / "smoke.sqlite3"),
        "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30},
    }
}
CELERY_BROKER_URL = "filesystem://"
CELERY_BROKER_TRANSPORT = filesystem_broker.TRANSPORT
CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker.transport_options(VAR / "broker")
CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_DEFAULT_QUEUE = "smoke"
DYRYGENT_TICK_INTERVAL = 1.0
