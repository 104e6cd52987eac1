"""HTTP routes other than the proxied OpenAI calls, one module per concern."""

from .admin import admin_routes
from .context import RouterContext
from .management import management_routes
from .models import model_routes
from .status import status_routes

__all__ = ["RouterContext", "admin_routes", "management_routes", "model_routes", "status_routes"]
