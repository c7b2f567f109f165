"""Prism: instant copy-on-write branches of PostgreSQL, created when a client connects."""

__version__ = "0.1.0"
