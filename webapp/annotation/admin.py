from django.contrib import admin

from webapp.annotation import models


class QuestionInline(admin.TabularInline):  # type: ignore[type-arg]
    model = models.Question
    extra = 0


class MembershipInline(admin.TabularInline):  # type: ignore[type-arg]
    model = models.Membership
    extra = 0
    raw_id_fields = ["user"]


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The raw records; admins edit projects on the manage pages, which check every change."""

    list_display = ["name", "task_type", "overlap", "gold_share", "is_active", "created_at"]
    list_filter = ["task_type", "is_active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created_by", "created_at", "updated_at"]
    inlines = [QuestionInline, MembershipInline]


@admin.register(models.Question)
class QuestionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["key", "project", "kind", "required", "position"]
    list_filter = ["project", "kind"]
    search_fields = ["key", "text"]


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["user", "project", "paused", "created_at"]
    list_filter = ["project", "paused"]
    search_fields = ["user__username"]
    raw_id_fields = ["user"]


@admin.register(models.Prompt)
class PromptAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "project", "source", "created_at"]
    list_filter = ["project", "source"]
    search_fields = ["text"]
    readonly_fields = ["digest"]


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["name", "parent", "created_at"]


@admin.register(models.Response)
class ResponseAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "prompt", "model_version", "created_at"]
    list_filter = ["model_version"]
    raw_id_fields = ["prompt"]


class ItemResponseInline(admin.TabularInline):  # type: ignore[type-arg]
    model = models.ItemResponse
    extra = 0
    raw_id_fields = ["response"]


@admin.register(models.Item)
class ItemAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "project", "is_gold", "live_submissions", "is_complete"]
    list_filter = ["project", "is_gold", "is_complete"]
    raw_id_fields = ["prompt"]
    inlines = [ItemResponseInline]


@admin.register(models.Submission)
class SubmissionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "item", "annotator", "submitted_at", "active_ms", "undone_at"]
    list_filter = ["item__project"]
    raw_id_fields = ["item", "annotator"]


@admin.register(models.Label)
class LabelAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "item", "annotator", "question", "undone_at"]
    raw_id_fields = ["submission", "item", "annotator", "question"]


@admin.register(models.Flag)
class FlagAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "item", "annotator", "reason", "status", "created_at"]
    list_filter = ["status"]
    raw_id_fields = ["item", "annotator", "reviewed_by"]


@admin.register(models.GoldAnswer)
class GoldAnswerAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "item", "question"]
    raw_id_fields = ["item", "question"]


admin.site.register(models.Skip)
admin.site.register(models.Lease)
admin.site.register(models.AnnotationEvent)
