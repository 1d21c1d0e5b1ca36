"""Deployment checks that need no Docker engine; docker-compose.yml itself is checked in tests/test_compose.py."""

from __future__ import annotations

from test_compose import COMPOSE  # noqa: F401  (tests/test_listen.py reads the compose file from here)
