from django.db import models


class Execution(models.Model):
    """One run of a test task: lets end-to-end tests check order and counts."""

    label = models.CharField(max_length=100)
    task_id = models.CharField(max_length=255)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"{self.label} ({self.task_id})"
