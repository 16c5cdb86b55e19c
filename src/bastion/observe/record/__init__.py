"""ExecutionRecord export and offline verification (DESIGN §3, Observe)."""

from ._record import (
    FORMAT,
    RecordVerdict,
    build_record,
    context_digest,
    key_id,
    signed_message,
    verify_record,
)

__all__ = [
    "FORMAT",
    "RecordVerdict",
    "build_record",
    "context_digest",
    "key_id",
    "signed_message",
    "verify_record",
]
