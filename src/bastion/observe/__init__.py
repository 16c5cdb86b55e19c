"""Observe: the journal (the ExecutionRecord), its verification, and what other planes need of a database."""

from ._db import Database, UtcDateTime

__all__ = ["Database", "UtcDateTime"]
