"""DAG workflows for Django, executed by Celery, stored in database rows."""

__version__ = "0.1.0"
