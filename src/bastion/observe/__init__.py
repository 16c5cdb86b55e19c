"""Observe: the journal (the ExecutionRecord), its verification, telemetry, and what other planes need of a database."""

from ._db import Database, UtcDateTime
from ._telemetry import ChatSpan, RunSpan, Telemetry, ToolSpan

__all__ = ["ChatSpan", "Database", "RunSpan", "Telemetry", "ToolSpan", "UtcDateTime"]
