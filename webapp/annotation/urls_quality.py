"""quality URLs; see webapp/annotation/urls.py."""

from django.urls import URLPattern, URLResolver, path

from webapp.annotation.views import quality

urlpatterns: list[URLPattern | URLResolver] = [
    path("", quality.overview, name="quality"),
    path("annotators/", quality.annotators, name="quality-annotators"),
    path("flags/", quality.flags, name="quality-flags"),
    path("flags/items/<int:item_id>/review/", quality.review_flags, name="quality-flag-review"),
    path("projects/<slug:slug>/", quality.project_quality, name="quality-project"),
    path(
        "projects/<slug:slug>/annotators/",
        quality.annotators,
        name="quality-project-annotators",
    ),
    path(
        "projects/<slug:slug>/annotators/<int:user_id>/pause/",
        quality.pause,
        name="quality-pause",
    ),
]
