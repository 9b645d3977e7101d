"""The collector's config file: where it listens and how agents prove who they are, the
registry of known agents, the checks it assigns by label selector, and its limits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import AfterValidator, Field, FilePath, field_validator
from pydantic import ValidationInfo as Info

from loginprobe.address import split_host_port
from loginprobe.config import Resolver, Seconds, Strict, TargetURL, is_loopback, load


def _address(value: str) -> str:
    split_host_port(value)
    return value


Address = Annotated[str, AfterValidator(_address)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")]
Labels = dict[Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$")], str]


class TLS(Strict):
    cert: FilePath  # the collector's certificate chain (PEM)
    key: FilePath
    # With a client CA every agent must present a certificate it signed (mTLS); gRPC cannot
    # make the certificate optional, so token-only agents need a listener without one.
    client_ca: FilePath | None = None

    @field_validator("cert", "client_ca")
    @classmethod
    def _certificates(cls, v: Path | None) -> Path | None:
        # Read here so a bad file is named with its line; gRPC would only say "failed to bind".
        if v is not None:
            try:
                x509.load_pem_x509_certificates(v.read_bytes())
            except (ValueError, OSError):
                raise ValueError(f"{v} holds no readable PEM certificate") from None
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: Path) -> Path:
        try:
            serialization.load_pem_private_key(v.read_bytes(), password=None)
        except (ValueError, TypeError, OSError):
            raise ValueError(f"{v} holds no readable, unencrypted PEM private key") from None
        return v


class Agent(Strict):
    """One known agent. Its credential is a token's SHA-256 or its certificate's name, so
    this file holds nothing an attacker could log in with."""

    id: Name
    token_sha256: str | None = None
    cert_cn: str | None = None
    cert_san: str | None = Field(default=None, validate_default=True)
    revoked: bool = False
    # Fixed by the operator: these win over what the agent claims in its hello.
    labels: Labels = {}

    @field_validator("token_sha256")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError(
                f"expected the SHA-256 of the agent's token as 64 hex digits "
                f"(printf %s TOKEN | sha256sum), found {len(v)} characters"
            )
        return v.lower() if v else v

    @field_validator("cert_san")
    @classmethod
    def _one_credential(cls, v: str | None, info: Info) -> str | None:
        given = [v, info.data.get("token_sha256"), info.data.get("cert_cn")]
        if sum(x is not None for x in given) != 1:
            raise ValueError("give exactly one credential: token_sha256, cert_cn or cert_san")
        return v


def _unique_agents(agents: list[Agent]) -> list[Agent]:
    """One credential, one agent: anything shared would make identity ambiguous."""
    for what in ("id", "token_sha256", "cert_cn", "cert_san"):
        values = [getattr(a, what) for a in agents if getattr(a, what) is not None]
        shared = {v for v in values if values.count(v) > 1}
        if shared:
            which = "" if what == "token_sha256" else f" {sorted(shared)[0]!r}"
            raise ValueError(f"two agents share {what}{which}; each needs its own")
    return agents


AgentList = Annotated[list[Agent], AfterValidator(_unique_agents)]


class AgentsFile(Strict):
    """A separate registry file (agents: PATH in the main config), reloaded on change."""

    agents: AgentList = []


class Check(Strict):
    """A check the collector assigns to every agent whose labels match the selector."""

    name: Name
    url: TargetURL
    interval: Seconds = 60.0
    timeout: Seconds = Field(default=10.0, validate_default=True)
    # The NAME of a password the agent looks up in its own config; never the password.
    password_ref: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")] | None = None
    ca_file: str | None = None  # a path on the agent's machine
    insecure: bool = False
    resolver: Resolver | None = None
    labels: Labels = {}
    selector: Labels = {}  # empty: every agent
    # "session": each agent holds the login with a keepalive every `keepalive` seconds
    # (XMPP and MQTT; MQTT's keepalive field holds at most 65535).
    mode: Literal["login", "session"] = "login"
    keepalive: Annotated[Seconds, Field(le=65535)] = 30.0

    @field_validator("timeout")
    @classmethod
    def _within_interval(cls, v: float, info: Info) -> float:
        interval = info.data.get("interval")
        if interval is not None and v > interval:
            raise ValueError(f"the timeout ({v:g}s) must not exceed the interval ({interval:g}s)")
        return v



def _unique_checks(checks: list[Check]) -> list[Check]:
    names = [c.name for c in checks]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"two checks are named {name!r}; names must be unique")
    return checks


class Limits(Strict):
    max_message_bytes: int = Field(default=4 * 2**20, ge=1024, le=64 * 2**20)
    max_batch_results: int = Field(default=1000, ge=1, le=100_000)
    # Batches above this rate are delayed, not refused, so a replay after an outage slows
    # down instead of failing and starting over.
    max_batches_per_second: float = Field(default=20.0, gt=0)


class Keepalive(Strict):
    """HTTP/2 keepalive on agent streams: how often agents may ping (their pings find a dead
    collector, or a NAT mapping gone, between results), and how the collector finds dead
    agents itself."""

    # An agent pinging more often than this is sent GOAWAY too_many_pings; the agent's
    # default (collector.keepalive.time, 10 s) must not be below it.
    min_ping_interval: Seconds = 5.0
    time: Seconds = 30.0  # the collector's own pings on a quiet connection
    timeout: Seconds = 10.0  # a ping unanswered this long ends the connection


class Metrics(Strict):
    """How /metrics keeps its series in check."""

    # A series (an agent, a check, a path) not fed for this long is removed.
    series_ttl: Seconds = 3600.0
    # Distinct values one label (check, target, agent, region, ...) may take; further ones
    # are counted under __overflow__ so one runaway label cannot exhaust memory.
    max_label_values: int = Field(default=1000, ge=1)


class Traces(Strict):
    """OpenTelemetry traces of attempts, exported over OTLP/gRPC."""

    endpoint: Address  # HOST:PORT of an OTLP/gRPC receiver (a collector, Tempo, Jaeger)
    insecure: bool = False  # plaintext gRPC to the receiver
    # Failed attempts are all exported; successes at this ratio, decided by trace id.
    success_sample_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    # Spans waiting for export; past it new ones are dropped and counted, never waited for.
    queue_size: int = Field(default=10_000, ge=1)
    # Sampled successes exported per second at most (each costs ~0.4 ms of the collector's
    # CPU in the OpenTelemetry SDK); failures are not limited. Counted as over_budget.
    max_sampled_per_second: float = Field(default=100.0, gt=0)


class EventLog(Strict):
    """JSON lines for failed attempts and for checks that start failing or recover."""

    file: Path | None = None  # absent: stderr


class StatusPage(Strict):
    """The read-only /status page on the metrics listener."""

    enabled: bool = True
    # Without a token the page answers only clients on loopback; with one (read from this
    # environment variable at start), any client sending `Authorization: Bearer TOKEN`.
    token_env: str | None = None
    # Attempts kept per (check, agent, path): memory stays bounded whatever the fleet does.
    max_attempts: int = Field(default=10, ge=1, le=1000)


class CollectorConfig(Strict):
    listen: Address = "127.0.0.1:7443"
    tls: TLS | None = None
    # Checked even when absent: it is where the transport as a whole is validated.
    allow_plaintext_loopback: bool = Field(default=False, validate_default=True)
    metrics_listen: Address | None = "127.0.0.1:9464"
    agents: AgentList = []
    # A file with its own `agents:` list, for registries kept apart from the config.
    agents_file: Path | None = Field(default=None, validate_default=True)
    checks: Annotated[list[Check], AfterValidator(_unique_checks)] = []
    limits: Limits = Limits()
    keepalive: Keepalive = Keepalive()
    results_log: Path | None = None  # JSON lines of every accepted result (tests, audits)
    # Each agent's high-water mark: a local file (relative paths from the working
    # directory) for one collector alone, or redis://[:PASSWORD@]HOST:PORT/DB (rediss://,
    # unix://) shared by several replicas.
    state: str = Field(default="collector.state", min_length=1)
    # Read at start (a reload does not change them); an exporter not configured costs nothing.
    metrics: Metrics = Metrics()
    traces: Traces | None = None
    event_log: EventLog | None = None
    status: StatusPage = StatusPage()
    log_format: Literal["plain", "json"] = "plain"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace: Seconds = 5.0

    @field_validator("agents_file")
    @classmethod
    def _one_registry(cls, v: Path | None, info: Info) -> Path | None:
        if v is not None and info.data.get("agents"):
            raise ValueError("give agents inline or in agents_file, not both")
        return v

    @field_validator("allow_plaintext_loopback")
    @classmethod
    def _transport(cls, v: bool, info: Info) -> bool:
        if "tls" not in info.data or info.data["tls"] is not None:
            return v  # TLS is configured, or its own error is already reported
        listen = info.data.get("listen")
        if not v:
            raise ValueError(
                "no tls section: the collector needs tls.cert and tls.key, or "
                "allow_plaintext_loopback: true with a loopback listen address"
            )
        if listen and not is_loopback(split_host_port(listen)[0]):
            raise ValueError(
                f"plaintext is only allowed on a loopback listen address, not {listen}; "
                "add a tls section"
            )
        return v


@dataclass(frozen=True)
class Loaded:
    """A validated config with its agent registry resolved, and the files it came from."""

    config: CollectorConfig
    agents: list[Agent]
    files: list[Path]


def load_config(path: str | Path) -> Loaded:
    """Read the main file and, if agents live in their own file, that one too. Raises
    ConfigError naming FILE:LINE of whichever file is wrong."""
    path = Path(path)
    config = load(path, CollectorConfig)
    if config.agents_file is not None:
        # Relative paths are taken as given (from the working directory), as everywhere in
        # this file and in the agent's.
        registry = load(config.agents_file, AgentsFile)
        return Loaded(config, registry.agents, [path, config.agents_file])
    return Loaded(config, config.agents, [path])
