from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "webapp.annotation"
    label = "annotation"
    verbose_name = "Annotation"
