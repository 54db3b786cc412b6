"""The annotation workspace's URLs, in three parts:

urls_workspace  annotators: their projects, the queue, answering, skip, flag, undo, history
urls_manage     admins: projects and questions with a live preview, prompt uploads, users
urls_quality    admins and researchers (read-only): statistics, agreement, consensus, flags
"""

from django.urls import include, path

app_name = "annotation"

urlpatterns = [
    path("", include("webapp.annotation.urls_workspace")),
    path("manage/", include("webapp.annotation.urls_manage")),
    path("quality/", include("webapp.annotation.urls_quality")),
]
