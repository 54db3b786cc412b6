from django.contrib import admin

from webapp.core.models import WorkerProbe


@admin.register(WorkerProbe)
class WorkerProbeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("queue", "requested_at", "answered_at", "worker", "requested_by")
    list_filter = ("queue",)
    readonly_fields = ("queue", "requested_at", "answered_at", "worker", "details", "requested_by")
