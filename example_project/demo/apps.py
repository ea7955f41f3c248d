from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo app: tasks, a workflow builder, a page to start and watch workflows."""

    name = "example_project.demo"
    label = "demo"
    verbose_name = "django_dyrygent demo"
