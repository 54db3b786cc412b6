from django.contrib import admin
from django.urls import include, path

# A form too large to read is a 413 in the terms of its page, not a bare 400 (see the module).
handler400 = "webapp.core.oversized.bad_request"

urlpatterns = [
    path("", include("webapp.core.urls")),
    path("accounts/", include("webapp.accounts.urls")),
    path("annotate/", include("webapp.annotation.urls")),
    path("exports/", include("webapp.exports.urls")),
    path("training/", include("webapp.training.urls")),
    path("api/", include("webapp.api.urls")),
    path("admin/", admin.site.urls),
]
