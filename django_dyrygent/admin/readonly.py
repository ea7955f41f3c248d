"""``ReadOnlyAdmin``: the base of every admin page of this app (the engine owns the rows).

Apart from ``admin`` so that the workflow page and the node and worker pages
(``admin_nodes``) share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path

from .display import admin_url, pretty_json


class ReadOnlyAdmin(admin.ModelAdmin):
    """The engine owns these rows: the admin shows them and never edits them.

    JSON too large to show whole is cut on the page (``display.pretty_json``);
    ``json_values`` names the values the ``<id>/json/<name>/`` view serves whole.
    """

    #: name -> function(obj) giving a JSON value served whole by ``json_view``.
    json_values: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    #: Columns the list never shows: not read per row (a 10 MB payload would be, 100 times a page).
    list_defer: tuple[str, ...] = ()

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if self.list_defer and match and match.url_name == "%s_%s_changelist" % (
            self.opts.app_label, self.opts.model_name,
        ):
            queryset = queryset.defer(*self.list_defer)
        return queryset

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = [f.name for f in self.model._meta.concrete_fields]
        return fields + [f for f in self.readonly_fields if f not in fields]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "POST":
            # Nothing to save: every field is read-only; the actions have their own URLs.
            raise PermissionDenied
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "show_delete": False,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<path:object_id>/json/<str:name>/", self.admin_site.admin_view(self.json_view),
                 name="%s_%s_json" % info),
        ] + super().get_urls()

    def _get_viewable(self, request: HttpRequest, object_id: str) -> Any:
        obj = self.get_object(request, object_id)
        if obj is None:
            raise Http404(f"No {self.opts.verbose_name} with id {object_id!r}.")
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        return obj

    def json_view(self, request: HttpRequest, object_id: str, name: str) -> JsonResponse:
        """The whole of a JSON value the page shows cut (a link under the cut leads here)."""
        if name not in self.json_values:
            raise Http404(f"No JSON value named {name!r}; there are: {', '.join(sorted(self.json_values))}.")
        obj = self._get_viewable(request, object_id)
        return JsonResponse(self.json_values[name](obj), safe=False, encoder=DjangoJSONEncoder,
                            json_dumps_params={"indent": 2, "ensure_ascii": False})

    def json_url(self, obj: Any, name: str) -> str:
        return admin_url(self.admin_site, str(self.opts.model_name), "json", obj.pk, name)

    def pretty_value(self, obj: Any, name: str) -> str:
        return pretty_json(self.json_values[name](obj), self.json_url(obj, name))
