"""The harness's error for bad configuration (a leaf module: config and the system registry both raise it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot run; the message names the field and the fix."""
