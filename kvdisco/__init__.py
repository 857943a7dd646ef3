"""kvdisco: a replicated key-value store and service-discovery system for container platforms."""

__version__ = "0.1.0"
