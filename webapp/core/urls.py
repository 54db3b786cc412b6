from django.urls import path

from webapp.core import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("system/", views.system, name="system"),
    path("system/probes/", views.system_probes, name="system-probes"),
]
