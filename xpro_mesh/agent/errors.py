"""The agent's own error: it cannot start (or go on), with the one line to print."""

from __future__ import annotations

__all__ = ["AgentError"]


class AgentError(Exception):
    """The agent cannot start; the message is the one line to print."""
