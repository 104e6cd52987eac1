"""HTTP routes other than the proxied OpenAI calls, one module per concern (built from a `RouterContext`)."""

from router_app.web.routes.admin import admin_routes
from router_app.web.routes.console import console_routes
from router_app.web.routes.context import RouterContext
from router_app.web.routes.management import management_routes
from router_app.web.routes.models import model_routes
from router_app.web.routes.status import status_routes

__all__ = ["RouterContext", "admin_routes", "console_routes", "management_routes", "model_routes", "status_routes"]
