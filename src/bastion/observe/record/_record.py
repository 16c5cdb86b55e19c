"""The ExecutionRecord: one JSON document per run that can be checked anywhere, offline.

It holds the agent spec as it was, the input, every journal entry as stored, the blobs they
reference, the result, the chain's head, and an Ed25519 signature by the tenant's record key over
the run id, the entry count and the head hash. ``verify_record`` recomputes the chain from the
entries and checks the signature; given the tenant's public key (``--public-key``) it also refuses
a record re-signed with another key.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.observe.journal import GENESIS, Entry, canonical, digest, entry_hash

FORMAT = "bastion.record/v1"


def signed_message(run_id: str, entries: int, head: str, context: str) -> bytes:
    """What the signature covers: the format, the run, how many entries, the head hash, and the
    digest of the rest of the record (the run's summary with its input and result, the agent spec)."""
    return f"{FORMAT}\n{run_id}\n{entries}\n{head}\n{context}".encode()


def context_digest(run: dict[str, Any], agent: dict[str, Any]) -> str:
    return digest(canonical({"run": run, "agent": agent}))


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def entry_document(entry: Entry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "attempt": entry.attempt,
        "kind": entry.kind,
        "request": entry.request,
        "requestHash": entry.request_hash,
        "decision": entry.decision,
        "reasons": entry.reasons,
        "response": entry.response,
        "error": entry.error,
        "startedAt": entry.started_at.isoformat(),
        "durationUs": entry.duration_us,
        "prevHash": entry.prev_hash,
        "hash": entry.hash,
    }


def build_record(
    *,
    run: dict[str, Any],
    agent: dict[str, Any],
    entries: list[Entry],
    blobs: dict[str, bytes],
    signing_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    head = entries[-1].hash if entries else GENESIS
    public = signing_key.public_key().public_bytes_raw()
    signature = signing_key.sign(
        signed_message(str(run["id"]), len(entries), head, context_digest(run, agent))
    )
    return {
        "format": FORMAT,
        "run": run,
        "agent": agent,
        "entries": [entry_document(e) for e in entries],
        "blobs": {k: base64.b64encode(v).decode() for k, v in sorted(blobs.items())},
        "chain": {"entries": len(entries), "head": head},
        "signature": {
            "alg": "Ed25519",
            "keyId": key_id(public),
            "publicKey": base64.b64encode(public).decode(),
            "value": base64.b64encode(signature).decode(),
        },
    }


@dataclass(frozen=True, kw_only=True)
class RecordVerdict:
    ok: bool
    entries: int
    head: str
    broken_seq: int | None = None
    reason: str | None = None
    key_id: str | None = None


def _fields(run_id: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The hashed fields of an entry, exactly as ``Entry.hashed_fields`` builds them."""
    return {
        "run_id": run_id,
        "seq": doc["seq"],
        "attempt": doc["attempt"],
        "kind": doc["kind"],
        "request": doc["request"],
        "request_hash": doc["requestHash"],
        "decision": doc["decision"],
        "reasons": doc["reasons"],
        "response": doc["response"],
        "error": doc["error"],
        "started_at": doc["startedAt"],
        "duration_us": doc["durationUs"],
    }


def verify_record(record: dict[str, Any], *, public_key: bytes | None = None) -> RecordVerdict:
    """Check a record offline: chain, blobs, counts, head, signature (and the key, if pinned)."""
    try:
        return _verify(record, public_key)
    except (KeyError, TypeError, ValueError) as exc:
        return RecordVerdict(ok=False, entries=0, head="", reason=f"the record is malformed: {exc!r}")


def _verify(record: dict[str, Any], public_key: bytes | None) -> RecordVerdict:
    if record.get("format") != FORMAT:
        return RecordVerdict(ok=False, entries=0, head="", reason=f"not a {FORMAT} document")
    run_id = str(record["run"]["id"])
    docs = cast(list[dict[str, Any]], record["entries"])
    blobs = {k: base64.b64decode(v) for k, v in cast(dict[str, str], record["blobs"]).items()}
    prev = GENESIS

    def broken(seq: int, reason: str) -> RecordVerdict:
        return RecordVerdict(ok=False, entries=len(docs), head=prev, broken_seq=seq, reason=reason)

    for position, doc in enumerate(docs, start=1):
        seq = int(doc["seq"])
        if seq != position:
            return broken(
                seq, f"expected seq {position} here, found seq {seq} (an entry was removed or inserted)"
            )
        if doc["prevHash"] != prev:
            return broken(
                seq, "its previous-hash does not match the entry before it (removed, inserted or reordered)"
            )
        if entry_hash(prev, _fields(run_id, doc)) != doc["hash"]:
            return broken(seq, "its content does not match its hash (edited)")
        for payload in (doc["request"], doc["response"]):
            if isinstance(payload, dict) and "$blob" in payload:
                key = str(cast(dict[str, Any], payload)["$blob"])
                if key not in blobs or digest(blobs[key]) != key:
                    return broken(seq, f"blob {key[:12]}… is missing or altered")
        request = doc["request"]
        is_blob = isinstance(request, dict) and "$blob" in request
        # A request that held a secret is stored scrubbed, so it no longer hashes to the raw
        # request's hash (which replay compares); the entry's own hash still covers both.
        scrubbed = not is_blob and b"[REDACTED:" in canonical(request)
        if not is_blob and not scrubbed and digest(canonical(request)) != doc["requestHash"]:
            return broken(seq, "its request does not match its request hash (edited)")
        prev = doc["hash"]
    chain = record["chain"]
    if chain["entries"] != len(docs) or chain["head"] != prev:
        seq = min(len(docs), int(chain["entries"])) + 1 if chain["entries"] != len(docs) else len(docs)
        return broken(
            seq,
            f"the record's chain says {chain['entries']} entries ending at {str(chain['head'])[:12]}…, the entries say {len(docs)} ending at {prev[:12]}…",
        )
    signature = record["signature"]
    embedded = base64.b64decode(signature["publicKey"])
    if public_key is not None and embedded != public_key:
        return RecordVerdict(
            ok=False,
            entries=len(docs),
            head=prev,
            reason="signed with another key than the tenant's record key",
            key_id=key_id(embedded),
        )
    try:
        Ed25519PublicKey.from_public_bytes(embedded).verify(
            base64.b64decode(signature["value"]),
            signed_message(run_id, len(docs), prev, context_digest(record["run"], record["agent"])),
        )
    except InvalidSignature:
        return RecordVerdict(
            ok=False,
            entries=len(docs),
            head=prev,
            reason="the signature does not match this run, its entries, its result and its agent spec",
            key_id=key_id(embedded),
        )
    return RecordVerdict(ok=True, entries=len(docs), head=prev, key_id=key_id(embedded))
