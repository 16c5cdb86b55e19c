"""The journal (ExecutionRecord rows), hash-chained per run."""

from ._canonical import GENESIS, canonical, canonical_text, digest
from ._journal import BLOB_THRESHOLD, Entry, Journal, Prepared, Verdict, entry_hash
from ._tables import blobs, journal_checkpoints, journal_entries, metadata

__all__ = [
    "BLOB_THRESHOLD",
    "GENESIS",
    "Entry",
    "Journal",
    "Prepared",
    "Verdict",
    "blobs",
    "canonical",
    "canonical_text",
    "digest",
    "entry_hash",
    "journal_checkpoints",
    "journal_entries",
    "metadata",
]
