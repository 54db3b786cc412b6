from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("webapp.core.urls")),
    path("accounts/", include("webapp.accounts.urls")),
    path("annotate/", include("webapp.annotation.urls")),
    path("exports/", include("webapp.exports.urls")),
    path("training/", include("webapp.training.urls")),
    path("api/", include("webapp.api.urls")),
    path("admin/", admin.site.urls),
]
