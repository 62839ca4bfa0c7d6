"""spitguard: keeps SPIT and SIP scanners away from desk phones."""

__version__ = "0.1.0"
