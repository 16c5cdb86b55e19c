"""Personal data in tool results and model outputs, found by Presidio's pattern recognizers.

No model is downloaded: the analyzer runs on Presidio's ``NoOpNlpEngine`` with a registry of
pattern recognizers only (emails, phone numbers via ``phonenumbers``, card numbers with the Luhn
check, IBANs with their checksum, US SSNs, IP addresses) plus one of ours for API-key-shaped
tokens. The email recognizer's validation is replaced by an offline one: Presidio's asks
``tldextract``, which would fetch the public suffix list from the network on first use.
The engine is built once per process, on first use (importing Presidio takes about a second).

A broken install fails fast, every time: ``phonenumbers`` loads a region's metadata on first use,
holding a lock that a failing import never releases, so every later check would hang on it. The
metadata is loaded whole when the engine is built, nothing is loaded lazily after that, and an
engine that could not be built is remembered as broken: each check then fails at once, and the
policy engine turns the failure into a deny (fail closed).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

API_KEY_PATTERNS = (
    # Prefixed secrets: OpenAI/Anthropic/Stripe-style sk-/pk-/rk-, GitHub, Slack, AWS, Google.
    r"\b(?:sk|pk|rk)[-_](?:[a-z]{2,8}[-_])?[A-Za-z0-9_-]{16,}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b",
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    r"\bAIza[0-9A-Za-z_-]{35}\b",
)
_lock = threading.Lock()
_LOCK_SECONDS = 30.0
"""A check that cannot get the analyzer this long fails (a stuck check must not stall the others)."""
_built: AnalyzerEngine | None = None
_broken: str | None = None
_build_lock = threading.Lock()


class PiiUnavailable(RuntimeError):
    """The PII analyzer cannot be used in this process; every check fails (and so denies)."""


@dataclass(frozen=True, slots=True)
class Detection:
    entity: str
    start: int
    end: int
    score: float


def analyzer() -> AnalyzerEngine:
    """The process's analyzer, built on first use.

    Raises:
        PiiUnavailable: it could not be built (now or at an earlier attempt)."""
    global _built, _broken
    if _built is not None:
        return _built
    if not _build_lock.acquire(timeout=_LOCK_SECONDS):
        raise PiiUnavailable(f"the PII analyzer was still being built after {_LOCK_SECONDS:g} s")
    try:
        if _built is None:
            if _broken is not None:
                raise PiiUnavailable(_broken)
            try:
                _built = _build()
            except Exception as exc:
                _broken = f"the PII analyzer could not be loaded: {type(exc).__name__}: {str(exc)[:200]}"
                raise PiiUnavailable(_broken) from exc
        return _built
    finally:
        _build_lock.release()


def _build() -> AnalyzerEngine:
    from phonenumbers.phonemetadata import PhoneMetadata
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:  # type: ignore[override]
            _, _, domain = pattern_text.rpartition("@")
            labels = domain.split(".")
            tld = labels[-1]
            return len(labels) >= 2 and all(labels) and 2 <= len(tld) <= 63 and tld.isalpha()

    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        OfflineEmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        IpRecognizer(),
        PatternRecognizer(
            supported_entity="API_KEY",
            name="ApiKeyRecognizer",
            patterns=[Pattern(f"api key {i}", p, 0.8) for i, p in enumerate(API_KEY_PATTERNS)],
        ),
    ):
        registry.add_recognizer(recognizer)
    # Every region now, not one by one under a lock a failed import would leave held.
    PhoneMetadata.load_all()
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]),
        supported_languages=["en"],
    )


def detect(text: str, entities: Collection[str], min_score: float) -> list[Detection]:
    """PII in ``text``: non-overlapping detections, leftmost first (the higher score wins a tie)."""
    if not text.strip():
        return []
    engine = analyzer()
    # Presidio's recognizers keep per-call state on shared objects.
    if not _lock.acquire(timeout=_LOCK_SECONDS):
        raise PiiUnavailable(f"another PII check held the analyzer for over {_LOCK_SECONDS:g} s")
    try:
        results = engine.analyze(
            text=text, language="en", entities=sorted(entities), score_threshold=min_score
        )
    finally:
        _lock.release()
    found = sorted(
        (
            Detection(r.entity_type, r.start, r.end, float(r.score))
            for r in results
            if not (r.entity_type == "IP_ADDRESS" and _inside_dotted_run(text, r.start, r.end))
        ),
        key=lambda d: (d.start, -d.score, -(d.end - d.start)),
    )
    kept: list[Detection] = []
    for d in found:
        if kept and d.start < kept[-1].end:
            continue
        kept.append(d)
    return kept


def _inside_dotted_run(text: str, start: int, end: int) -> bool:
    """``1.2.3.4`` inside ``1.2.3.4.5`` (a version, an OID) is not an address."""
    after, before = text[end : end + 2], text[max(0, start - 2) : start]
    return (len(after) == 2 and after[0] == "." and after[1].isdigit()) or (
        len(before) == 2 and before[1] == "." and before[0].isdigit()
    )


def redact(text: str, detections: Collection[Detection]) -> str:
    """``text`` with each detection replaced by ``[PII:ENTITY]``."""
    out: list[str] = []
    pos = 0
    for d in sorted(detections, key=lambda d: d.start):
        out.append(text[pos : d.start])
        out.append(f"[PII:{d.entity}]")
        pos = d.end
    out.append(text[pos:])
    return "".join(out)
