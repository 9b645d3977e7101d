"""The agent's config file: where the collector is and how to prove who we are, the agent's
labels and network paths, local checks, password sources, the spool's limits and the local
metrics address."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, FilePath, field_validator
from pydantic import ValidationInfo as Info

from loginprobe.address import split_host_port
from loginprobe.config import CAFile, Resolver, Seconds, Strict, TargetURL, is_loopback, load
from loginprobe.contract import NetworkType
from loginprobe.protocols import BY_NAME, HOLDS_ONLY
from loginprobe.target import parse_target

_SIZES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _bytes(value: object) -> object:
    """1048576, "100MB", "256MiB"."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([kmg]i?b|b)?\s*", value.lower())
        if not m:
            raise ValueError("expected a size such as 1048576, 100MB or 256MiB")
        return int(m[1]) * _SIZES[m[2] or ""]
    return value


Bytes = Annotated[int, BeforeValidator(_bytes), Field(gt=0)]


def _env_is_set(name: str | None) -> str | None:
    # Checked at load so a missing secret stops the agent at start, not an hour later; the
    # message names the variable, never a value.
    if name is not None and name not in os.environ:
        raise ValueError(f"the environment variable {name} is not set")
    if name is not None and not os.environ[name]:
        raise ValueError(f"the environment variable {name} is empty")
    return name


class TLS(Strict):
    ca_file: CAFile | None = None  # None: the system's trust store
    cert_file: FilePath | None = None  # client certificate for mTLS
    key_file: FilePath | None = Field(default=None, validate_default=True)
    server_name: str | None = None  # the name the collector's certificate must cover

    @field_validator("key_file")
    @classmethod
    def _pair(cls, key: Path | None, info: Info) -> Path | None:
        if (key is None) != (info.data.get("cert_file") is None):
            raise ValueError("cert_file and key_file go together (mTLS needs both)")
        return key


def _joined(value: object) -> object:
    """A YAML list of addresses as the one string it is kept as."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return value


class Keepalive(Strict):
    """HTTP/2 pings on the stream: they end a stream to a dead or unreachable collector
    within time + timeout, even when no result is due. The collector must allow pings this
    often (its keepalive.min_ping_interval, 5 s by default)."""

    time: Seconds = 10.0
    timeout: Seconds = 5.0


class Collector(Strict):
    # HOST:PORT, or several (replicas): a list, or one string separated by commas (handy in
    # an environment variable). On a broken stream the agent reconnects to the next; a name
    # with several addresses counts as that many endpoints.
    address: Annotated[str, BeforeValidator(_joined)]
    tls: TLS = TLS()
    keepalive: Keepalive = Keepalive()
    # The bearer token is read from the environment or a file, never written in this file.
    token_env: str | None = None
    token_file: FilePath | None = None
    # Validated even when absent: it is where the transport as a whole is checked.
    plaintext: bool = Field(default=False, validate_default=True)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        for one in v.split(","):
            split_host_port(one.strip())
        return v

    @property
    def addresses(self) -> list[str]:
        return [one.strip() for one in self.address.split(",")]

    _token_env = field_validator("token_env")(_env_is_set)

    @field_validator("token_file")
    @classmethod
    def _one_token(cls, v: Path | None, info: Info) -> Path | None:
        if v is not None and info.data.get("token_env") is not None:
            raise ValueError("set token_env or token_file, not both")
        return v

    @field_validator("plaintext")
    @classmethod
    def _transport(cls, v: bool, info: Info) -> bool:
        address = info.data.get("address")
        addresses = [a.strip() for a in address.split(",")] if address else []
        if v and not all(is_loopback(split_host_port(a)[0]) for a in addresses):
            raise ValueError(
                "plaintext is only allowed for a loopback collector (127.0.0.1, ::1, "
                "localhost); anything else must use TLS"
            )
        tls = info.data.get("tls")
        if not v and tls is not None and tls.cert_file is None and (
            info.data.get("token_env") is None and info.data.get("token_file") is None
        ):
            raise ValueError(
                "no credential for the collector: set tls.cert_file and tls.key_file (mTLS) "
                "or token_env / token_file"
            )
        return v

    def token(self) -> str | None:
        """Read at every connect, so a rotated token file is picked up without a restart."""
        if self.token_env:
            return os.environ.get(self.token_env)
        if self.token_file:
            return self.token_file.read_text(encoding="utf-8").strip()
        return None


class Labels(BaseModel):
    """Labels of the agent, or of one path (where set, a path's win over the agent's); more
    labels than these are allowed and travel with every result."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, str] = Field(init=False)
    region: str = ""
    carrier: str = ""
    # None: detected per path from the interface (agent/netinfo.py), "unknown" if it cannot.
    network_type: NetworkType | None = None
    asn: int | None = Field(default=None, ge=0, lt=2**32)

    def as_dict(self) -> dict[str, str]:
        """The labels that are set, as strings (an empty region is as good as none)."""
        return {k: str(v) for k, v in self.model_dump().items() if v not in (None, "")}


class NetworkPath(Strict):
    """One way out of this machine: every check runs on every path at the same moment."""

    name: str = Field(min_length=1, max_length=64)
    interface: str | None = Field(default=None, min_length=1, max_length=15)  # IFNAMSIZ - 1
    source_address: str | None = None
    resolver: Resolver | None = None  # this path's DNS server; a check's own resolver wins
    labels: Labels = Labels()

    @field_validator("source_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an IP address") from None
        return v



class PasswordSource(Strict):
    """Where a password comes from: an environment variable or a file, exactly one."""

    env: str | None = None
    file: FilePath | None = None

    _env = field_validator("env")(_env_is_set)

    @field_validator("file")
    @classmethod
    def _exactly_one(cls, v: Path | None, info: Info) -> Path | None:
        if (v is None) == (info.data.get("env") is None):
            raise ValueError("give exactly one of env: VAR or file: PATH")
        return v

    def read(self) -> str | None:
        if self.env:
            return os.environ.get(self.env)
        if self.file:
            return self.file.read_text(encoding="utf-8").rstrip("\r\n")
        return None


class Check(Strict):
    """A check this agent runs whatever the collector assigns."""

    name: str = Field(min_length=1)
    url: TargetURL
    interval: Seconds = 60.0
    timeout: Seconds | None = None  # None: 10 s, or the interval when that is shorter
    password_env: str | None = None
    password_file: FilePath | None = Field(default=None, validate_default=True)
    ca_file: CAFile | None = None
    insecure: bool = False
    resolver: Resolver | None = None
    # After a failure that suggests the wrong protocol, TLS mode or port, find out what the
    # port speaks (at most once per interval).
    follow_up: bool = True
    # "session": log in once and hold the session for as long as the agent runs, with a
    # keepalive every `keepalive` seconds, reporting its drops and reconnects.
    mode: Literal["login", "session"] = "login"
    keepalive: Seconds = Field(default=30.0, validate_default=True)

    @field_validator("keepalive")
    @classmethod
    def _session(cls, v: float, info: Info) -> float:
        url = info.data.get("url")
        if url:
            check_mode(url, info.data.get("mode", "login"), v)
        return v

    @field_validator("timeout")
    @classmethod
    def _within_interval(cls, v: float | None, info: Info) -> float | None:
        interval = info.data.get("interval")
        if v is not None and interval is not None and v > interval:
            raise ValueError(f"the timeout ({v:g}s) must not exceed the interval ({interval:g}s)")
        return v

    _password_env = field_validator("password_env")(_env_is_set)

    @field_validator("password_file")
    @classmethod
    def _password(cls, v: Path | None, info: Info) -> Path | None:
        if "password_env" not in info.data:  # it failed already; one error is enough
            return v
        env = info.data["password_env"]
        if v is not None and env is not None:
            raise ValueError("set password_env or password_file, not both")
        url = info.data.get("url")
        if v is None and env is None and url and parse_target(url).user:
            raise ValueError(f"{url} logs in as a user: set password_env or password_file")
        return v


    @property
    def effective_timeout(self) -> float:
        return self.timeout or min(10.0, self.interval)

    @property
    def password(self) -> PasswordSource:
        return PasswordSource.model_construct(env=self.password_env, file=self.password_file)


class Spool(Strict):
    path: Path
    max_bytes: Bytes = 256 * 2**20  # the results stored; the file is a little larger
    max_age: Seconds = 7 * 86400.0


class AgentConfig(Strict):
    collector: Collector
    labels: Labels = Labels()
    # No paths: one path the way the system routes, as before paths existed.
    paths: list[NetworkPath] = []
    checks: list[Check] = []
    # password_ref of an assigned check -> where this agent finds that password.
    passwords: dict[str, PasswordSource] = {}
    spool: Spool
    concurrency: int = Field(default=64, ge=1, le=10_000)  # probes running at once
    listen: str | None = "127.0.0.1:9465"  # /metrics and /healthz; null turns them off

    @field_validator("checks", "paths")
    @classmethod
    def _unique_names(cls, v: list[Check] | list[NetworkPath], info: Info) -> list[Any]:
        seen: set[str] = set()
        for item in v:
            if item.name in seen:
                raise ValueError(
                    f"two {info.field_name} are named {item.name!r}; names must be unique"
                )
            seen.add(item.name)
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            split_host_port(v)
        return v


# MQTT's keepalive is a 16-bit number of seconds; XMPP servers time idle streams out sooner.
MAX_KEEPALIVE = 65535.0


def check_mode(url: str, mode: str, keepalive: float) -> None:
    """Raises ValueError unless a check of this mode can run (local or assigned alike)."""
    if mode not in ("login", "session"):
        raise ValueError(f"mode {mode!r}: expected login or session")
    if mode != "session":
        return
    if not BY_NAME[parse_target(url).protocol].holds:
        raise ValueError(f"{url}: mode: session holds only {HOLDS_ONLY}")
    if not 0 < keepalive <= MAX_KEEPALIVE:
        raise ValueError(f"keepalive {keepalive:g}s: give one between 0 and "
                         f"{MAX_KEEPALIVE:g} seconds (MQTT's limit)")


def load_config(path: str | Path) -> AgentConfig:
    """Parse and validate the agent's config file, or raise ConfigError naming FILE:LINE. A
    relative spool path is taken from the config file's folder, wherever the agent was
    started: the spool stays beside the config that named it."""
    cfg = load(path, AgentConfig)
    if cfg.spool.path.is_absolute():
        return cfg
    spool = cfg.spool.model_copy(update={"path": Path(path).parent.resolve() / cfg.spool.path})
    return cfg.model_copy(update={"spool": spool})
