"""Snapshot pages, for researchers and admins: the list with the create form, a snapshot's
live progress and manifest, and its files."""

from __future__ import annotations

import json

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.middleware import HtmxDetails

from webapp.accounts.decorators import role_required
from webapp.accounts.models import Role, User
from webapp.exports import services
from webapp.exports.forms import ExportForm
from webapp.exports.models import ExportSnapshot

VIEWERS = (Role.RESEARCHER, Role.ADMIN)
LIST_SIZE = 50
MANIFEST_ROWS = [("Filters", "filters"), ("Options", "options"), ("Counts", "counts")]


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _snapshot(snapshot_id: int) -> ExportSnapshot:
    return get_object_or_404(
        ExportSnapshot.objects.select_related("project", "created_by"), pk=snapshot_id
    )


@role_required(*VIEWERS)
@require_http_methods(["GET", "POST"])
def snapshots(request: HtmxHttpRequest) -> HttpResponse:
    """The newest snapshots, and the form that creates one (a POST lands on its page)."""
    form = ExportForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            assert isinstance(request.user, User)
            try:
                snapshot = services.create_snapshot(user=request.user, **form.export_request())
            except services.ExportError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                return redirect("exports:detail", snapshot_id=snapshot.pk)
    context = {
        "form": form,
        "snapshots": ExportSnapshot.objects.select_related("project", "created_by")[:LIST_SIZE],
    }
    return render(request, "exports/snapshots.html", context, status=status)


@role_required(*VIEWERS)
@require_GET
def detail(request: HtmxHttpRequest, snapshot_id: int) -> HttpResponse:
    """A snapshot's page; htmx polls its status fragment while it is being built."""
    snapshot = _snapshot(snapshot_id)
    manifest = snapshot.manifest
    context = {
        "snapshot": snapshot,
        # Shown as JSON, the form the manifest file and the API give them in.
        "settings_json": [
            (label, json.dumps(manifest[key])) for label, key in MANIFEST_ROWS if key in manifest
        ],
    }
    template = "exports/detail.html"
    return render(request, template + "#status" if request.htmx else template, context)


@role_required(*VIEWERS)
@require_GET
def download(request: HttpRequest, snapshot_id: int, name: str) -> HttpResponseBase:
    snapshot = _snapshot(snapshot_id)
    try:
        handle = services.open_snapshot_file(snapshot, name)
    except services.ExportError as error:
        if error.status == 404:
            raise Http404(error.message) from None
        return HttpResponse(error.message, status=error.status, content_type="text/plain")
    return FileResponse(handle, as_attachment=True, filename=name)
