"""The resource kinds of DESIGN §2. Specs are written by clients; Bastion writes status.

Fields later planes do not use yet are kept minimal, but every field validates now, so a manifest
that applies today keeps its meaning tomorrow.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from ._meta import API_VERSION, Model, Name, ObjectMeta, Status
from ._names import KIND_PLURALS, kind_named
from ._patterns import check_regex, check_rego, check_schema, linear

Tier = Literal["T0", "T1", "T2", "T3", "T4"]
TIERS: tuple[Tier, ...] = ("T0", "T1", "T2", "T3", "T4")
"""Trust tiers, lowest first."""
Provider = Literal["openai", "anthropic", "scripted"]
SandboxBackend = Literal["process", "bwrap", "gvisor"]
IMAGE_BASES = ("python3.11",)
"""The agent image bases a worker knows (``spec.image``); each names an interpreter on the host."""
# PEP 508 without URLs, paths or options: a name, extras, version specifiers, an environment marker.
_REQUIREMENT = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"(?:\[\s*[A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*\s*\])?"
    r"\s*(?:\(?\s*(?:~=|===|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
    r"(?:\s*,\s*(?:~=|===|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*\s*\)?)?"
    r"(?:\s*;\s*[A-Za-z0-9_.<>=!~'\" ()]+)?"
)
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> int:
    """Seconds in a duration like ``90s``, ``15m``, ``1h30m`` or ``7d``."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration: write it like '30s', '15m', '1h30m' or '7d'")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


def _check_image(name: str) -> str:
    if name not in IMAGE_BASES:
        raise ValueError(f"unknown image {name!r}: the known bases are {', '.join(IMAGE_BASES)}")
    return name


def _check_requirement(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(
            f"requirement {text!r} is a pip option: only requirements like 'six==1.17.0' are allowed"
        )
    if "://" in stripped or "@" in stripped or "/" in stripped or "\\" in stripped:
        raise ValueError(
            f"requirement {text!r} names a URL or a path: only packages from the registries, like 'six==1.17.0'"
        )
    if _REQUIREMENT.fullmatch(stripped) is None:
        raise ValueError(
            f"requirement {text!r} is not a package requirement: write it like 'six', 'six==1.17.0' or 'attrs[tests]>=23'"
        )
    return stripped


def _check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    check_schema(schema)  # a valid schema whose patterns RE2 compiles (matched in linear time)
    return schema


Duration = Annotated[str, AfterValidator(_check_duration)]
JsonSchema = Annotated[dict[str, Any], AfterValidator(_check_json_schema)]
ImageName = Annotated[str, Field(max_length=256), AfterValidator(_check_image)]
PipRequirement = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_check_requirement)]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
ToolName = Name
"""Tools are referred to by their resource name, e.g. ``kb.search``."""


class Resource(Model):
    """The envelope shared by every kind."""

    kind_name: ClassVar[str] = ""
    plural: ClassVar[str] = ""
    write_role: ClassVar[str] = "developer"
    """The least role that may apply or delete this kind."""

    api_version: Literal["bastion/v1"] = API_VERSION
    metadata: ObjectMeta
    status: Status | None = None


# --- Agent ------------------------------------------------------------------------------------


class AgentLimits(Model):
    cpu_seconds: PositiveFloat = 30.0
    """CPU time per attempt."""
    memory_mib: PositiveInt = 512
    """Resident memory cap of the sandbox."""
    wall_seconds: PositiveFloat = 300.0
    """Wall-clock time per run."""
    tool_calls: PositiveInt | None = None
    """Tool calls per run; unset means no cap beyond grants."""
    tokens: PositiveInt | None = None
    """Model tokens per run."""
    cost_usd: PositiveFloat | None = None
    """Model cost per run, in US dollars."""


class ErrorBudget(Model):
    max_errors: PositiveInt = 10
    """Errors (refused or failed calls) allowed per run before the budget is exhausted. A person's
    denial of an approval, or an approval left to expire, is not the agent's error."""
    max_repeats: PositiveInt = 3
    """Repeats of the same error allowed per run."""
    revoke_on_violation: bool = True
    """Whether one procedure violation (a call a Policy rule refused, a skipped phase) exhausts the budget."""
    on_exhausted: Literal["endRun", "revokeAgent"] = "endRun"
    """What an exhausted budget does. ``endRun``: that run ends (``Revoked``, with a handoff); the
    agent's other runs and its trust are untouched, so one injected document cannot take the agent
    down for everyone. ``revokeAgent``: the agent is also revoked in its namespace (or demoted, if
    every Policy's ``trust.onBudgetExceeded`` says ``demote``), which ends its other runs too."""


class AgentSpec(Model):
    runtime: Literal["python", "llm"]
    """``python``: your code in a sandbox. ``llm``: Bastion's declarative model/tool loop."""
    entrypoint: (
        Annotated[
            str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
        ]
        | None
    ) = None
    """For ``python``: ``module:function``, called with the run's input; its return value is the result."""
    source: Annotated[str, Field(max_length=1024 * 1024)] | None = None
    """For ``python``: the entrypoint module's source, shipped into the run's workspace as
    ``<module>.py``. In a manifest, ``sourceFile: path`` (relative to the manifest) is read into
    this field by the CLI."""
    image: ImageName | None = None
    """For ``python``: the agent image's base (``python3.11``); unset means the sandbox backend's
    default interpreter with the standard library only."""
    requirements: Annotated[list[PipRequirement], Field(max_length=100)] = Field(default_factory=list[str])
    """For ``python``: packages installed into the image before the agent starts (the sandbox has
    no network), like ``six==1.17.0``; wheels from the registries the worker's pip reaches. Needs
    ``image``."""
    instructions: str | None = Field(default=None, min_length=1, max_length=100_000)
    """For ``llm``: the system instructions."""
    model_policy: Name | None = None
    """The ModelPolicy every model call of this agent goes through."""
    tools: list[ToolName] = Field(default_factory=list[str])
    """Tools the agent may ask for (each call still needs a ToolGrant)."""
    memory_scopes: list[Name] = Field(default_factory=list[str])
    tier: Tier = "T0"
    """Trust tier; tools and grants may require a minimum."""
    max_turns: PositiveInt = 20
    """For ``llm``: model turns before the run stops."""
    limits: AgentLimits = Field(default_factory=AgentLimits)
    sandbox: SandboxBackend | None = None
    """Sandbox backend; unset means the platform default."""
    error_budget: ErrorBudget = Field(default_factory=ErrorBudget)

    @model_validator(mode="after")
    def _runtime_fields(self) -> AgentSpec:
        if self.runtime == "python" and self.entrypoint is None:
            raise ValueError("runtime 'python' needs spec.entrypoint, e.g. 'agent:main'")
        if self.requirements and self.image is None:
            raise ValueError(
                f"spec.requirements needs spec.image naming a base to install them into: one of {', '.join(IMAGE_BASES)}"
            )
        if self.runtime == "llm":
            if self.instructions is None:
                raise ValueError("runtime 'llm' needs spec.instructions")
            if self.model_policy is None:
                raise ValueError("runtime 'llm' needs spec.modelPolicy naming a ModelPolicy")
        return self


class Agent(Resource):
    kind_name = "Agent"
    plural = "agents"
    kind: Literal["Agent"] = "Agent"
    spec: AgentSpec


# --- Tool -------------------------------------------------------------------------------------

ToolEffect = Literal["write", "external", "payment"]
ProvenanceSource = Literal["input", "trusted", "untrusted", "agent"]
"""Where a value an agent sends can come from: ``input`` (the run's input, from whoever started the
run), ``trusted`` (a result of a Tool with ``trusted: true``), ``untrusted`` (any other tool's
result), ``agent`` (found in none of these: the agent's or its model's own text)."""
_PATH_SEGMENT = re.compile(r"[^.\s]{1,128}")


def _check_path(path: str) -> str:
    if path in ("", "*"):
        return path
    segments = path.split(".")
    if len(segments) > 16 or not all(_PATH_SEGMENT.fullmatch(s) for s in segments):
        raise ValueError(
            f"{path!r} is not an argument path: write top-level and nested keys joined by dots, "
            "'*' for any key or list item (e.g. 'recipient', 'payee.iban', 'lines.*.iban'), "
            "or '' for every argument"
        )
    return path


ArgumentPath = Annotated[str, Field(max_length=1024), AfterValidator(_check_path)]


class ProvenanceRequirement(Model):
    """Where the values at some argument paths may come from (``from``), with values always
    accepted (``allow``)."""

    paths: list[ArgumentPath] = Field(default_factory=lambda: [""], min_length=1, max_length=64)
    """Argument paths (``recipient``, ``payee.iban``, ``lines.*.iban``; ``''``: every argument).
    Every string at a path, and what percent-encoding, base64 or JSON in it hides, is checked."""
    from_: Annotated[list[ProvenanceSource], Field(alias="from", min_length=1)] = Field(
        default_factory=lambda: list[ProvenanceSource](("input", "trusted", "agent"))
    )
    """The sources a value may come from; a value that holds data from any other source fails.
    ``[input]``: the value must be in the run's input. Default: anything but untrusted data."""
    allow: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list[str], max_length=1000
    )
    """Values accepted whatever their source (compared normalized: case, whitespace, Unicode forms)."""
    action: Literal["deny", "require_approval"] = "deny"
    """What a failing call gets: refused, or held for a person."""

    @model_validator(mode="after")
    def _sources_unique(self) -> ProvenanceRequirement:
        if len(set(self.from_)) != len(self.from_):
            raise ValueError("'from' lists a source twice")
        return self


class BuiltinImpl(Model):
    type: Literal["builtin"]
    name: ToolName
    """The builtin to use, e.g. ``http.fetch`` or ``fs.read``."""
    headers: dict[str, str] = Field(default_factory=dict[str, str])
    """For ``http.fetch``: headers the gateway adds after the policy check; ``{secret:NAME}`` or
    ``{secret:NAME/KEY}`` placeholders are filled from Secrets. The agent never sees them."""


class HttpImpl(Model):
    type: Literal["http"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict[str, str])
    """Headers; ``{secret:NAME}`` placeholders are filled by the gateway after the policy check."""


class McpImpl(Model):
    type: Literal["mcp"]
    server: Annotated[str, Field(min_length=1, max_length=2048)]
    """A command line (stdio) or an ``http(s)://`` URL (streamable HTTP)."""
    tool: str | None = None
    """The upstream tool's name, when it differs from this Tool's."""


class PythonImpl(Model):
    type: Literal["python"]
    entrypoint: Annotated[str, Field(min_length=1, max_length=512)]


ToolImpl = Annotated[BuiltinImpl | HttpImpl | McpImpl | PythonImpl, Field(discriminator="type")]


class ToolSpec(Model):
    description: Annotated[str, Field(min_length=1, max_length=4096)]
    parameters: JsonSchema = Field(default_factory=lambda: {"type": "object"})
    """JSON Schema of the arguments."""
    implementation: ToolImpl
    risk: Literal["low", "medium", "high", "critical"] = "low"
    min_tier: Tier = "T0"
    secrets: list[Name] = Field(default_factory=list[str])
    """Secrets the gateway may inject into this tool's requests."""
    effect: ToolEffect | None = None
    """What a call does beyond reading: ``write`` (changes data), ``external`` (reaches someone
    outside, e.g. sends a message), ``payment`` (moves money). A tool that declares one is
    *consequential*: Policy rules with ``provenance.effects`` hold its arguments to where their
    values came from. Unset: a read."""
    trusted: bool = False
    """Its results are trusted data: values the agent takes from them do not carry the
    ``untrusted`` label (see ``provenance`` in ToolGrants and Policy rules). Operator-owned: a
    developer's write that sets or changes it is refused, since a trusted tool launders values."""


class Tool(Resource):
    kind_name = "Tool"
    plural = "tools"
    kind: Literal["Tool"] = "Tool"
    spec: ToolSpec


# --- ToolGrant --------------------------------------------------------------------------------


class Subjects(Model):
    agents: list[Name] = Field(default_factory=list[str])
    labels: dict[str, str] = Field(default_factory=dict[str, str])
    """Agents whose labels include all of these."""
    tiers: list[Tier] = Field(default_factory=list[Tier])

    @model_validator(mode="after")
    def _not_empty(self) -> Subjects:
        if not (self.agents or self.labels or self.tiers):
            raise ValueError("name at least one subject: agents, labels or tiers")
        return self


class RateLimit(Model):
    calls: PositiveInt
    per: Duration = "1m"
    scope: Literal["agent", "tenant"] = "agent"
    """Count each agent's calls on its own (``agent``) or all the agents together (``tenant``) that
    this grant or rule covers: the grant or Policy of this namespace, not a same-named one in another
    namespace or tenant."""


def _check_regex(pattern: str) -> str:
    return check_regex(pattern)  # RegexError (a ValueError) names what RE2 refused


Regex = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_check_regex)]


class ToolGrantSpec(Model):
    subjects: Subjects
    tools: Annotated[list[ToolName], Field(min_length=1)]
    effect: Literal["allow", "deny"] = "allow"
    """``deny`` forbids the tools to the subjects whatever other grants allow (deny wins)."""
    arguments: dict[ToolName, JsonSchema] = Field(default_factory=dict[str, dict[str, Any]])
    """Per tool, a JSON Schema that scopes this grant: a call whose arguments do not satisfy it
    is not covered by this grant (another grant may still cover it)."""
    require_arguments: dict[ToolName, JsonSchema] = Field(default_factory=dict[str, dict[str, Any]])
    """Per tool, a JSON Schema the arguments must satisfy or the call is denied, whatever other
    grants allow ("deny unless"). Applies while the grant has not expired."""
    argument_patterns: dict[ToolName, dict[str, Regex]] = Field(default_factory=dict[str, dict[str, str]])
    """Per tool, per top-level argument, a regular expression the whole value must match
    (numbers and booleans are matched as their JSON text; objects and lists never match)."""
    max_calls: PositiveInt | None = None
    """Calls allowed per run; unset means no cap."""
    egress: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(default_factory=list[str])
    """Hosts ``http.fetch`` may reach through this grant (globs like ``*.example.com``, optionally
    with ``:port``); empty means none."""
    rate_limit: RateLimit | None = None
    require_approval: bool = False
    """Each call this grant allows waits for a human decision (``bastion approve``); the run is
    suspended meanwhile, holding no sandbox."""
    approval_timeout: Duration = "24h"
    """An undecided approval past this is denied (expired)."""
    min_tier: Tier = "T0"
    expires_at: datetime | None = None
    """After this instant the grant matches nothing."""
    require_provenance: dict[ToolName, list[ProvenanceRequirement]] = Field(
        default_factory=dict[str, list[ProvenanceRequirement]]
    )
    """Per tool, where its arguments' values may come from (the run's input, trusted tools, an
    allowlist): a call whose arguments fail is denied (or held for approval), whatever other
    grants allow, like ``requireArguments``."""

    @model_validator(mode="after")
    def _requirements_allow(self) -> ToolGrantSpec:
        if self.require_arguments and self.effect == "deny":
            raise ValueError(
                "requireArguments applies to allowing grants; a deny grant denies every call already"
            )
        stray = sorted(set(self.require_arguments) - set(self.tools))
        if stray:
            raise ValueError(
                f"requireArguments names tools the grant does not list in tools: {', '.join(stray)}"
            )
        if self.require_provenance and self.effect == "deny":
            raise ValueError(
                "requireProvenance applies to allowing grants; a deny grant denies every call already"
            )
        stray = sorted(set(self.require_provenance) - set(self.tools))
        if stray:
            raise ValueError(
                f"requireProvenance names tools the grant does not list in tools: {', '.join(stray)}"
            )
        return self


class ToolGrant(Resource):
    kind_name = "ToolGrant"
    plural = "toolgrants"
    write_role = "operator"
    kind: Literal["ToolGrant"] = "ToolGrant"
    spec: ToolGrantSpec


# --- Secret -----------------------------------------------------------------------------------

SECRET_PLACEHOLDER = "[REDACTED]"  # noqa: S105 -- the mask, not a secret


Destination = Annotated[
    str, Field(min_length=1, max_length=2048, pattern=r"^(https?://[^\s?#]+|\[?[A-Za-z0-9*._:\-\]]+)$")
]
"""A Secret destination: a host pattern or an ``http(s)://`` URL prefix (no query, no fragment)."""


class SecretUse(Model):
    tools: list[ToolName] = Field(default_factory=list[str])
    providers: list[Provider] = Field(default_factory=list[Provider])


class SecretSpec(Model):
    string_data: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")], str] = Field(
        default_factory=dict[str, str]
    )
    """The values. Write-only: stored encrypted and read back as ``[REDACTED]``."""
    usable_by: SecretUse = Field(default_factory=SecretUse)
    destinations: list[Destination] = Field(default_factory=list[str], max_length=64)
    """Where the gateway may send the values (invariant 2): host patterns (``api.example.com``,
    ``*.example.com``, with an optional ``:port``; without one, 443), https only; the same with
    an ``http://`` scheme for cleartext (``http://127.0.0.1:8765``); or URL prefixes
    (``https://api.example.com/v1/``). Only an operator writes this; a Tool or a ModelPolicy
    that points elsewhere gets a denial, not the secret. Empty: sent nowhere."""
    lease_ttl: Duration = "15m"

    @model_validator(mode="after")
    def _has_data(self) -> SecretSpec:
        if not self.string_data:
            raise ValueError("spec.stringData needs at least one key, e.g. {token: ...}")
        return self


class Secret(Resource):
    kind_name = "Secret"
    plural = "secrets"
    write_role = "operator"
    kind: Literal["Secret"] = "Secret"
    spec: SecretSpec


# --- ModelPolicy ------------------------------------------------------------------------------


class ScriptedCall(Model):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    """The tool the scripted model calls."""
    arguments: dict[str, Any] = Field(default_factory=dict[str, Any])


class ScriptTurn(Model):
    """One answer of the ``scripted`` provider: text, tool calls, or both."""

    text: str | None = Field(default=None, max_length=100_000)
    tool_calls: list[ScriptedCall] = Field(default_factory=list[ScriptedCall])

    @model_validator(mode="after")
    def _not_empty(self) -> ScriptTurn:
        if self.text is None and not self.tool_calls:
            raise ValueError("a script turn needs text, toolCalls, or both")
        return self


class ModelTarget(Model):
    provider: Provider
    model: Annotated[str, Field(min_length=1, max_length=256)]
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)] | None = None
    secret: Name | None = None
    """The Secret holding this provider's API key."""
    timeout_seconds: PositiveFloat = 60.0
    script: list[ScriptTurn] = Field(default_factory=list[ScriptTurn], max_length=1000)
    """For ``scripted``: the answers, in order; a conversation's n-th model turn gets the n-th.
    Without a script, the scripted model echoes the last user message."""


class Budgets(Model):
    tokens_per_run: PositiveInt | None = None
    cost_per_run: PositiveFloat | None = None
    tokens_per_agent_per_day: PositiveInt | None = None
    cost_per_agent_per_day: PositiveFloat | None = None
    cost_per_tenant_per_day: PositiveFloat | None = None


class Price(Model):
    input_per_mtok: Annotated[float, Field(ge=0)]
    output_per_mtok: Annotated[float, Field(ge=0)]


class ModelPolicySpec(Model):
    targets: Annotated[list[ModelTarget], Field(min_length=1)]
    """Tried in order (``priority``) or ranked by the strategy."""
    strategy: Literal["priority", "cheapest", "fastest"] = "priority"
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    max_output_tokens: PositiveInt | None = None
    budgets: Budgets = Field(default_factory=Budgets)
    prices: dict[str, Price] = Field(default_factory=dict[str, Price])
    """Per model name, USD per million tokens."""


class ModelPolicy(Resource):
    kind_name = "ModelPolicy"
    plural = "modelpolicies"
    kind: Literal["ModelPolicy"] = "ModelPolicy"
    spec: ModelPolicySpec


# --- MemoryScope ------------------------------------------------------------------------------


class MemoryScopeSpec(Model):
    type: Literal["working", "entity", "semantic"]
    readers: list[Name] = Field(default_factory=list[str])
    """Agents that may read; empty means none but the writers."""
    writers: list[Name] = Field(default_factory=list[str])
    retention: Duration | None = None
    """How long entries live; unset keeps them until deleted."""


class MemoryScope(Resource):
    kind_name = "MemoryScope"
    plural = "memoryscopes"
    kind: Literal["MemoryScope"] = "MemoryScope"
    spec: MemoryScopeSpec


# --- Policy -----------------------------------------------------------------------------------


class BlockedPattern(Model):
    match: Literal["substring", "regex", "glob"] = "substring"
    """``substring`` anywhere in a string; ``regex`` searched (case-insensitive, RE2 syntax: no
    backreferences or lookaround); ``glob`` matched against the whole string (``*`` any run, ``?``
    one character). All are matched in linear time after normalization: NFKC, case folding,
    invisible characters removed (and, separately, read as spaces), whitespace collapsed."""
    pattern: Annotated[str, Field(min_length=1, max_length=4096)]
    decode: list[Literal["percent", "base64"]] = Field(default_factory=list[Literal["percent", "base64"]])
    """Also match what percent-encoded or base64 strings decode to (JSON inside a string is
    always parsed)."""
    confusables: bool = False
    """Also match text that only looks like the pattern: both are compared as Unicode TR39
    skeletons, so Cyrillic U+0430 or Greek U+03BF stand for Latin ``a`` and ``o``."""

    @model_validator(mode="after")
    def _compiles(self) -> BlockedPattern:
        if self.match == "regex":
            linear(self.pattern, ignore_case=True)  # as it is matched: RegexError names the fault
            if self.confusables:
                raise ValueError("confusables applies to substring and glob patterns, not to a regex")
        return self


class ProvenanceRule(Model):
    effects: list[ToolEffect] = Field(default_factory=list[ToolEffect])
    """Only tools whose Tool declares one of these ``effect``s (consequential tools); empty: every
    tool the rule's ``tools`` cover."""
    paths: list[ArgumentPath] = Field(default_factory=lambda: [""], min_length=1, max_length=64)
    """Argument paths checked (``''``: every argument)."""
    from_: Annotated[list[ProvenanceSource], Field(alias="from", min_length=1)] = Field(
        default_factory=lambda: list[ProvenanceSource](("input", "trusted", "agent"))
    )
    """The sources a value may come from. Default: anything but untrusted data (the
    "trusted action" rule of information-flow control)."""
    allow: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list[str], max_length=1000
    )
    """Values accepted whatever their source."""


class PolicyRule(Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")]
    description: str = ""
    tools: list[str] = Field(default_factory=list[str])
    """Tools this rule applies to (globs); empty means all."""
    action: Literal["deny", "redact", "require_approval"] = "deny"
    applies_to: list[Literal["arguments", "tool_result", "model_output"]] = Field(
        default_factory=lambda: ["arguments"]
    )
    """Where the blocked patterns are looked for: a call's arguments, a tool's result, a model's output."""
    blocked_patterns: list[BlockedPattern] = Field(default_factory=list[BlockedPattern])
    egress_allow: list[str] = Field(default_factory=list[str])
    """Hosts ``http.fetch`` may reach (globs)."""
    rate_limit: RateLimit | None = None
    """Calls to this rule's tools allowed per window, per agent or per tenant."""
    provenance: ProvenanceRule | None = None
    """Where the arguments of the tools this rule covers may come from; the rule's ``action``
    (deny or require_approval) applies to a call that fails."""

    @model_validator(mode="after")
    def _provenance_action(self) -> PolicyRule:
        if self.provenance is not None and self.action == "redact":
            raise ValueError("a provenance rule cannot redact: set action to deny or require_approval")
        return self


PiiEntity = Literal[
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "API_KEY"
]
PII_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "API_KEY",
)


class PiiSettings(Model):
    action: Literal["allow", "redact", "deny"] = "redact"
    entities: list[PiiEntity] = Field(default_factory=lambda: list[PiiEntity](PII_ENTITIES))  # type: ignore[arg-type]
    """Which kinds of personal data to look for."""
    min_score: Annotated[float, Field(ge=0, le=1)] = 0.4
    """Detections scoring below this are ignored (a bare 9-digit number scores 0.05)."""


class PolicyLimits(Model):
    tool_calls_per_run: PositiveInt | None = None
    tokens_per_run: PositiveInt | None = None
    """Once a run has used this many model tokens, its tool calls are denied."""


class TrustSettings(Model):
    promote_after: PositiveInt | None = None
    """Consecutive compliant runs at a tier before the agent moves up one; unset: never automatically."""
    max_tier: Tier = "T2"
    """Automatic promotion stops here; operators promote further by hand."""
    on_budget_exceeded: Literal["revoke", "demote"] = "revoke"
    """What an exhausted error budget does to an agent whose ``errorBudget.onExhausted`` is
    ``revokeAgent`` (with the default ``endRun``, only the run ends)."""


class PolicySpec(Model):
    rules: list[PolicyRule] = Field(default_factory=list[PolicyRule])
    rego: Annotated[str, Field(max_length=200_000), AfterValidator(check_rego)] | None = None
    """A Rego module (``package bastion``) whose boolean ``allow`` must be true for every tool
    call; ``reasons`` (strings) explains a refusal. Errors and undefined results deny. It may
    not call the pattern builtins regopy matches by backtracking (``regex.match`` and the other
    ``regex.*`` matchers, ``glob.match``): match patterns with RE2 rules and grants instead."""
    pii: Literal["allow", "redact", "deny"] | PiiSettings = "allow"
    """What to do with personal data in tool results and model outputs."""
    limits: PolicyLimits = Field(default_factory=PolicyLimits)
    trust: TrustSettings = Field(default_factory=TrustSettings)

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicySpec:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique; repeated: {', '.join(dupes)}")
        return self


class Policy(Resource):
    kind_name = "Policy"
    plural = "policies"
    write_role = "operator"
    kind: Literal["Policy"] = "Policy"
    spec: PolicySpec


KINDS: dict[str, type[Resource]] = {
    cls.kind_name: cls for cls in (Agent, Tool, ToolGrant, Secret, ModelPolicy, MemoryScope, Policy)
}
"""Every kind by its ``kind`` name."""

if {kind: cls.plural for kind, cls in KINDS.items()} != KIND_PLURALS:  # pragma: no cover
    raise RuntimeError("bastion.api._names.KIND_PLURALS must list every kind and its plural")


def resolve_kind(text: str) -> type[Resource] | None:
    """A kind by its name, plural or lowercase name, as the CLI and routes accept them."""
    name = kind_named(text)
    return KINDS[name] if name else None
