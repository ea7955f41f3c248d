"""API tokens: made, listed and revoked here; the key is shown once, when it is made.

Only a superuser makes tokens for other users: a token acts as its user, so
making one for someone else would be acting as them.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import ForeignKey, QuerySet
from django.forms import ModelChoiceField
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "active")
    list_filter = ("revoked_at", "created_at")
    search_fields = ("name", "prefix")
    raw_id_fields = ("user",)
    actions = ("revoke_tokens",)
    fields = ("user", "name", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A token is made with a user and a name; after that only revoking changes it.
        if obj is None:
            return ["prefix", "created_at", "last_used_at", "revoked_at"]
        return list(self.fields)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        queryset = super().get_queryset(request).select_related("user")
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def formfield_for_foreignkey(
        self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField | None:
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = db_field.related_model._default_manager.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"user": request.user.pk, **super().get_changeform_initial_data(request)}

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        key = None if change else obj.set_key()
        super().save_model(request, obj, form, change)
        if key is not None:
            self.message_user(request, format_html(
                "Token {} made for {}: <code>{}</code> Copy it now: only its hash is kept, so it is never shown "
                "again. Send it as <code>Authorization: Bearer {}</code>.", obj.name, obj.user, key, key,
            ), messages.WARNING)

    @admin.display(description=_("active"), boolean=True)
    def active(self, obj: ApiToken) -> bool:
        return obj.revoked_at is None

    @admin.action(description=_("Revoke selected tokens"), permissions=("change",))
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
        self.message_user(request, ngettext("%(count)d token revoked.", "%(count)d tokens revoked.", revoked)
                          % {"count": revoked}, messages.SUCCESS)
