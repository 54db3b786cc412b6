from django.urls import URLPattern, path

from webapp.training import views

app_name = "training"

urlpatterns: list[URLPattern] = [
    path("", views.round_list, name="rounds"),
    path("new/", views.start, name="start"),
    path("<int:round_id>/", views.round_detail, name="round"),
    path("<int:round_id>/cancel/", views.cancel, name="cancel"),
    path("<int:round_id>/resume/", views.resume, name="resume"),
    path("projects/<slug:slug>/versions/", views.version_list, name="versions"),
    path(
        "projects/<slug:slug>/versions/<int:version_id>/promote/",
        views.promote,
        name="promote",
    ),
    path("projects/<slug:slug>/compare/", views.compare, name="compare"),
    path("projects/<slug:slug>/leaderboard/", views.leaderboard_page, name="leaderboard"),
]
