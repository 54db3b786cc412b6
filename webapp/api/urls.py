"""/api/: the versioned JSON API and the page where people manage their tokens.

No app namespace: ninja finds its own URLs under its `api-v1` namespace at the top level."""

from django.urls import URLPattern, URLResolver, path, re_path

from webapp.api import views
from webapp.api.api import api

urlpatterns: list[URLPattern | URLResolver] = [
    path("v1/", api.urls),
    re_path(r"^v1/", views.no_such_endpoint),
    path("tokens/", views.tokens, name="api-tokens"),
    path("tokens/<int:token_id>/revoke/", views.revoke, name="api-token-revoke"),
]
