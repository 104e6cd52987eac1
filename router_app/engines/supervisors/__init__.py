"""Supervisors start and stop engines: child processes or systemd units."""

from router_app.engines.supervisors.base import Supervisor, SupervisorError
from router_app.engines.supervisors.journal import JournalFollower
from router_app.engines.supervisors.process import ProcessSupervisor
from router_app.engines.supervisors.systemd import SystemdSupervisor, default_unit_name, systemd_escape

__all__ = [
    "JournalFollower",
    "ProcessSupervisor",
    "Supervisor",
    "SupervisorError",
    "SystemdSupervisor",
    "default_unit_name",
    "systemd_escape",
]
