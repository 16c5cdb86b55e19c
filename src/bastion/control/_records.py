"""Exporting ExecutionRecords, signed with a per-tenant Ed25519 key sealed under the master key."""

from __future__ import annotations

import base64
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from bastion.execution.runs import Run
from bastion.observe.journal import Journal, blobs
from bastion.observe.record import build_record, key_id
from bastion.secrets import Sealer

from ._resources import StoreResourceReader
from .store import Store
from .store._tables import record_keys


class RecordService:
    def __init__(self, store: Store, sealer: Sealer, journal: Journal, reader: StoreResourceReader) -> None:
        self._reader = reader
        self._store = store
        self._sealer = sealer
        self._journal = journal

    def _aad(self, tenant_id: str) -> bytes:
        return f"record-key/{tenant_id}".encode()

    def signing_key(self, tenant_id: str) -> Ed25519PrivateKey:
        """The tenant's record key, created on first use."""
        for _ in range(2):
            with self._store.read() as conn:
                row = (
                    conn.execute(select(record_keys).where(record_keys.c.tenant_id == tenant_id))
                    .mappings()
                    .first()
                )
            if row is not None:
                raw = self._sealer.open(bytes(row["sealed_private_key"]), self._aad(tenant_id))
                return Ed25519PrivateKey.from_private_bytes(raw)
            key = Ed25519PrivateKey.generate()
            private = key.private_bytes_raw()
            try:
                with self._store.write() as conn:
                    conn.execute(
                        insert(record_keys).values(
                            tenant_id=tenant_id,
                            public_key=key.public_key().public_bytes_raw(),
                            sealed_private_key=self._sealer.seal(private, self._aad(tenant_id)),
                            created_at=self._store.clock.now(),
                        )
                    )
            except IntegrityError:
                continue  # another request created it first: read that one
            return key
        raise RuntimeError("the record key could not be created")

    def public_key(self, tenant_id: str) -> dict[str, Any]:
        public = self.signing_key(tenant_id).public_key().public_bytes_raw()
        return {"alg": "Ed25519", "keyId": key_id(public), "publicKey": base64.b64encode(public).decode()}

    def export(self, run: Run) -> dict[str, Any]:
        entries = self._journal.entries(run.id)
        wanted: set[str] = set()
        for entry in entries:
            for payload in (entry.request, entry.response):
                if isinstance(payload, dict) and "$blob" in payload:
                    wanted.add(str(cast(dict[str, Any], payload)["$blob"]))
        found: dict[str, bytes] = {}
        if wanted:
            with self._store.read() as conn:
                for row in conn.execute(
                    select(blobs.c.digest, blobs.c.data).where(blobs.c.digest.in_(wanted))
                ):
                    found[row[0]] = bytes(row[1])
        summary = {k: v for k, v in run.public().items() if k not in {"journal"}}
        summary["tenantId"] = run.tenant_id
        record = build_record(
            run=summary,
            agent=run.agent_spec,
            entries=entries,
            blobs=found,
            signing_key=self.signing_key(run.tenant_id),
        )
        # The agent's tools as they are now (not signed): replay uses them to re-create workspace effects.
        listed = set(run.agent_spec.get("spec", {}).get("tools", []))
        tools = self._reader.resources(run.tenant_id, "Tool", run.namespace)
        record["tools"] = {m["metadata"]["name"]: m for m in tools if m["metadata"]["name"] in listed}
        return record
