from django.contrib import admin

from webapp.training.models import RoundLog, RoundMetric, TrainingRound


@admin.register(TrainingRound)
class TrainingRoundAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "project", "kind", "preset", "state", "stage", "worker", "created_at")
    list_filter = ("state", "kind", "project")
    readonly_fields = ("state", "worker", "heartbeat_at", "attempts", "task_id", "sent_at")


admin.site.register(RoundMetric)
admin.site.register(RoundLog)
