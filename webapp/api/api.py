"""The researcher API, served under /api/v1/ with its OpenAPI schema at /api/v1/openapi.json and
interactive docs at /api/v1/docs."""

from __future__ import annotations

from ninja import NinjaAPI

from webapp.api.errors import install_handlers
from webapp.api.routes import projects, snapshots
from webapp.api.security import BearerToken, TokenRateThrottle

api = NinjaAPI(
    title="RLHF Feedback API",
    version="1",
    description=(
        "Read projects, labels and quality statistics, and take export snapshots. "
        "For researchers and admins: send a personal token (create one at /api/tokens/) as "
        "`Authorization: Bearer <token>`. Each token may make a limited number of calls a "
        "minute; more are answered 429 with Retry-After."
    ),
    auth=BearerToken(),
    throttle=TokenRateThrottle(),
    urls_namespace="api-v1",
)
install_handlers(api)
api.add_router("/projects", projects.router)
api.add_router("/snapshots", snapshots.router)
