"""The HTTP application: DICOMweb under /dicomweb, the management API under /api/v1,
the web app (study browser and viewer) at /.

Routes are thin: they translate HTTP into calls on the services built by
:func:`hilum.app.build_services` and answer errors as problem details.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from hilum import __version__
from hilum.app import Services
from hilum.audit.http import AuditMiddleware
from hilum.web import problems
from hilum.web.api import annotations as annotations_api
from hilum.web.api import auth, changes, jobs, nodes, oidc, reading, resources, shares, system, users
from hilum.web.api import keyimages as keyimages_api
from hilum.web.api.audit import router as audit_router
from hilum.web.dicomweb import qido, rendered, stow, wado, wado_uri
from hilum.web.limits import RequestSizeLimit
from hilum.web.security import guard
from hilum.web.spa import SpaMiddleware
from hilum.web.uploads import UploadGuard

DICOMWEB_PREFIX = "/dicomweb"
API_PREFIX = "/api/v1"


def create_app(services: Services) -> FastAPI:
    app = FastAPI(
        title="Hilum",
        version=__version__,
        summary="DICOMweb (PS3.18) and management API of the Hilum PACS",
        docs_url="/api/docs",
        openapi_url="/api/v1/openapi.json",
        redoc_url=None,
    )
    app.state.services = services
    problems.install(app)
    # Stalled bodies time out, one address cannot hold every connection, disconnects are
    # one log line (hilum.web.uploads); inside the audit middleware, which records refusals.
    http = services.settings.http
    app.add_middleware(
        UploadGuard, body_timeout=http.body_timeout, max_per_client=http.max_uploads_per_client
    )
    app.add_middleware(AuditMiddleware)  # audit records for DICOMweb and API requests (hilum.audit.http)
    origins = services.settings.http.cors_origins
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Content-Type", "Content-Length", "Content-Location", "Warning"],
            max_age=600,
        )
    # The browser app (web/dist) at / and its client routes: public static files, outside
    # /api and /dicomweb (hilum.web.spa).
    app.add_middleware(SpaMiddleware)
    # Outermost: bodies other than DICOM uploads are bounded before anything reads them.
    app.add_middleware(RequestSizeLimit, limit=services.settings.http.max_request_bytes)
    # Every router goes through the one authorization dependency (web/security.py).
    dicomweb = [Depends(guard(DICOMWEB_PREFIX))]
    api = [Depends(guard(API_PREFIX))]
    for module in (qido, wado, rendered, stow, wado_uri):
        app.include_router(module.router, prefix=DICOMWEB_PREFIX, tags=["dicomweb"], dependencies=dicomweb)
    app.include_router(system.router, prefix=API_PREFIX, tags=["system"], dependencies=api)
    app.include_router(auth.router, prefix=API_PREFIX, tags=["authentication"], dependencies=api)
    app.include_router(oidc.router, prefix=API_PREFIX, tags=["authentication"], dependencies=api)
    app.include_router(users.router, prefix=API_PREFIX, tags=["users"], dependencies=api)
    app.include_router(resources.router, prefix=API_PREFIX, tags=["resources"], dependencies=api)
    app.include_router(annotations_api.router, prefix=API_PREFIX, tags=["measurements"], dependencies=api)
    app.include_router(keyimages_api.router, prefix=API_PREFIX, tags=["key images"], dependencies=api)
    app.include_router(reading.router, prefix=API_PREFIX, tags=["reading"], dependencies=api)
    app.include_router(nodes.router, prefix=API_PREFIX, tags=["remote AEs"], dependencies=api)
    app.include_router(jobs.router, prefix=API_PREFIX, tags=["jobs"], dependencies=api)
    app.include_router(changes.router, prefix=API_PREFIX, tags=["changes"], dependencies=api)
    app.include_router(audit_router, prefix=API_PREFIX, tags=["audit"], dependencies=api)
    app.include_router(shares.router, prefix=API_PREFIX, tags=["share links"], dependencies=api)
    return app
