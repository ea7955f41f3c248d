"""Benchmarks of django-dyrygent against native Celery canvas and celery-dyrygent (not a test package)."""
