"""One error hierarchy for user-facing problems (STYLE.md rule 7).

Every message names the offending file or value, on one line, so the CLI can print
``error: <message>`` and exit non-zero. ``assert`` stays for internal invariants.
"""

__all__ = ["EditorError", "ParameterError", "AudioError"]


class EditorError(Exception):
    """Base class for every error a user can cause and fix."""


class ParameterError(EditorError, ValueError):
    """A bad argument or configuration value."""


class AudioError(EditorError):
    """An audio file that cannot be used (missing, corrupt, too short, ...)."""
