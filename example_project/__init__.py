"""A runnable Django project that uses django_dyrygent (the quick start and CI run it)."""

# Importing the Celery app here makes it the current app as soon as Django
# starts, so workflows started from views and commands use its broker.
from .celery import app as celery_app

__all__ = ("celery_app",)
