"""Supervisors start and stop engines: child processes or systemd units."""

from .base import Supervisor, SupervisorError
from .process import ProcessSupervisor
from .systemd import SystemdSupervisor, default_unit_name, systemd_escape

__all__ = [
    "ProcessSupervisor",
    "Supervisor",
    "SupervisorError",
    "SystemdSupervisor",
    "default_unit_name",
    "systemd_escape",
]
