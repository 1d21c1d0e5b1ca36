"""Test doubles that stand in for external services (bound to 127.0.0.1 only)."""
