"""A reference phone that behaves like a Polycom, to check rendered configurations by
behaviour: it boots from the boot server, registers, answers calls, enforces
``requestValidation`` as configured and re-syncs on check-sync. See ``phone.py``."""

from .clock import Clock, LoopClock, ManualClock
from .config import FACTORY_ADMIN_PASSWORD, ConfigError, PhoneSettings, ValidationRule
from .phone import (
    DEFAULT_USER_AGENT,
    BootError,
    Call,
    FetchedFile,
    FetchRecord,
    ReferencePhone,
    Registration,
    Rejection,
    sip_user_agent,
)

__all__ = [
    "DEFAULT_USER_AGENT",
    "FACTORY_ADMIN_PASSWORD",
    "BootError",
    "Call",
    "Clock",
    "ConfigError",
    "FetchRecord",
    "FetchedFile",
    "LoopClock",
    "ManualClock",
    "PhoneSettings",
    "ReferencePhone",
    "Registration",
    "Rejection",
    "ValidationRule",
    "sip_user_agent",
]
