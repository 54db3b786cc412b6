from django.contrib import admin

from webapp.exports.models import ExportSnapshot


@admin.register(ExportSnapshot)
class ExportSnapshotAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["id", "project", "status", "formats", "created_by", "created_at"]
    list_filter = ["status", "project"]
    # Snapshots change only through their build; the salt stays out of sight.
    exclude = ["salt"]
    readonly_fields = [
        f.name for f in ExportSnapshot._meta.get_fields() if f.concrete and f.name != "salt"
    ]
