from django.apps import AppConfig


class ExportsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "webapp.exports"
    label = "exports"
    verbose_name = "Exports"
