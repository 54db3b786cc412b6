from django.urls import URLPattern, path

from webapp.exports import views

app_name = "exports"

urlpatterns: list[URLPattern] = [
    path("", views.snapshots, name="snapshots"),
    path("<int:snapshot_id>/", views.detail, name="detail"),
    path("<int:snapshot_id>/files/<str:name>", views.download, name="download"),
]
