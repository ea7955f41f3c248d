from .celery_app import app as celery_app  # noqa: F401  (like a project's __init__.py)
