"""workspace URLs; see webapp/annotation/urls.py."""

from django.urls import URLPattern, URLResolver, path, register_converter

from webapp.annotation.views import workspace


class ProjectSlugConverter:
    """A project slug, never `manage` or `quality`: those prefixes belong to the other parts of
    /annotate/ (urls.py includes this module first)."""

    regex = r"(?!(?:manage|quality)/)[-a-zA-Z0-9_]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ProjectSlugConverter, "project")

urlpatterns: list[URLPattern | URLResolver] = [
    path("", workspace.projects, name="projects"),
    path("<project:slug>/", workspace.annotate, name="annotate"),
    path("<project:slug>/history/", workspace.history, name="history"),
    path("<project:slug>/undo/", workspace.undo, name="undo"),
    path("<project:slug>/prompts/", workspace.write_prompt, name="write-prompt"),
    path("<project:slug>/items/<int:item_id>/submit/", workspace.submit, name="submit"),
    path("<project:slug>/items/<int:item_id>/skip/", workspace.skip, name="skip"),
    path("<project:slug>/items/<int:item_id>/flag/", workspace.flag, name="flag"),
]
