"""manage URLs; see webapp/annotation/urls.py."""

from django.urls import URLPattern, URLResolver, path

from webapp.annotation.views import manage, manage_users

urlpatterns: list[URLPattern | URLResolver] = [
    path("", manage.project_list, name="manage-projects"),
    path("projects/new/", manage.project_create, name="manage-project-create"),
    path("projects/<slug:slug>/", manage.project_detail, name="manage-project"),
    path("projects/<slug:slug>/preview/", manage.preview, name="manage-preview"),
    path("projects/<slug:slug>/questions/", manage.question_add, name="manage-question-add"),
    path(
        "projects/<slug:slug>/questions/<int:question_id>/",
        manage.question_edit,
        name="manage-question-edit",
    ),
    path(
        "projects/<slug:slug>/questions/<int:question_id>/remove/",
        manage.question_remove,
        name="manage-question-remove",
    ),
    path(
        "projects/<slug:slug>/questions/<int:question_id>/move/",
        manage.question_move,
        name="manage-question-move",
    ),
    path("projects/<slug:slug>/prompts/", manage.prompt_list, name="manage-prompts"),
    path("projects/<slug:slug>/upload/", manage.upload, name="manage-upload"),
    path("projects/<slug:slug>/members/", manage.members, name="manage-members"),
    path(
        "projects/<slug:slug>/members/<int:membership_id>/remove/",
        manage.member_remove,
        name="manage-member-remove",
    ),
    path("users/", manage_users.users, name="manage-users"),
    path("users/<int:user_id>/role/", manage_users.user_role, name="manage-user-role"),
    path("users/<int:user_id>/active/", manage_users.user_active, name="manage-user-active"),
    path("users/<int:user_id>/link/", manage_users.user_link, name="manage-user-link"),
    # Opened by the invited person, who is not signed in yet.
    path(
        "set-password/<uidb64>/<token>/",
        manage_users.SetPasswordView.as_view(),
        name="manage-set-password",
    ),
]
