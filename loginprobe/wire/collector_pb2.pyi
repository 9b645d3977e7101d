import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "results")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    results: ResultBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., results: _Optional[_Union[ResultBatch, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "checks", "ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    checks: CheckUpdate
    ack: Ack
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., checks: _Optional[_Union[CheckUpdate, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("version", "labels", "capabilities", "last_acked_seq", "sent_at", "spool_id")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    SPOOL_ID_FIELD_NUMBER: _ClassVar[int]
    version: str
    labels: _containers.ScalarMap[str, str]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    last_acked_seq: int
    sent_at: _timestamp_pb2.Timestamp
    spool_id: str
    def __init__(self, version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., last_acked_seq: _Optional[int] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spool_id: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("agent_id", "labels", "hello_received_at", "sent_at", "max_batch_results", "last_processed_seq")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HELLO_RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_RESULTS_FIELD_NUMBER: _ClassVar[int]
    LAST_PROCESSED_SEQ_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    labels: _containers.ScalarMap[str, str]
    hello_received_at: _timestamp_pb2.Timestamp
    sent_at: _timestamp_pb2.Timestamp
    max_batch_results: int
    last_processed_seq: int
    def __init__(self, agent_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., hello_received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_batch_results: _Optional[int] = ..., last_processed_seq: _Optional[int] = ...) -> None: ...

class CheckUpdate(_message.Message):
    __slots__ = ("full", "upsert", "remove")
    FULL_FIELD_NUMBER: _ClassVar[int]
    UPSERT_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    full: bool
    upsert: _containers.RepeatedCompositeFieldContainer[Check]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, full: _Optional[bool] = ..., upsert: _Optional[_Iterable[_Union[Check, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class Check(_message.Message):
    __slots__ = ("name", "url", "interval", "timeout", "password_ref", "ca_file", "insecure", "resolver", "labels", "mode", "keepalive")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_REF_FIELD_NUMBER: _ClassVar[int]
    CA_FILE_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    RESOLVER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    interval: _duration_pb2.Duration
    timeout: _duration_pb2.Duration
    password_ref: str
    ca_file: str
    insecure: bool
    resolver: str
    labels: _containers.ScalarMap[str, str]
    mode: str
    keepalive: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., password_ref: _Optional[str] = ..., ca_file: _Optional[str] = ..., insecure: _Optional[bool] = ..., resolver: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., mode: _Optional[str] = ..., keepalive: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ResultBatch(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ProbeResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ProbeResult, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class ProbeResult(_message.Message):
    __slots__ = ("seq", "check", "url", "protocol", "success", "reason", "step", "message", "hint", "started_at_unix_nano", "duration_ns", "resolved_address", "phases", "tls", "dns", "trace_id", "clock_offset_ns", "labels", "network", "findings", "session", "transcript")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    CLOCK_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    check: str
    url: str
    protocol: str
    success: bool
    reason: str
    step: str
    message: str
    hint: str
    started_at_unix_nano: int
    duration_ns: int
    resolved_address: str
    phases: _containers.RepeatedCompositeFieldContainer[Phase]
    tls: TLSInfo
    dns: DNSInfo
    trace_id: bytes
    clock_offset_ns: int
    labels: _containers.ScalarMap[str, str]
    network: NetworkContext
    findings: _containers.RepeatedScalarFieldContainer[str]
    session: SessionEvent
    transcript: _containers.RepeatedCompositeFieldContainer[TranscriptLine]
    def __init__(self, seq: _Optional[int] = ..., check: _Optional[str] = ..., url: _Optional[str] = ..., protocol: _Optional[str] = ..., success: _Optional[bool] = ..., reason: _Optional[str] = ..., step: _Optional[str] = ..., message: _Optional[str] = ..., hint: _Optional[str] = ..., started_at_unix_nano: _Optional[int] = ..., duration_ns: _Optional[int] = ..., resolved_address: _Optional[str] = ..., phases: _Optional[_Iterable[_Union[Phase, _Mapping]]] = ..., tls: _Optional[_Union[TLSInfo, _Mapping]] = ..., dns: _Optional[_Union[DNSInfo, _Mapping]] = ..., trace_id: _Optional[bytes] = ..., clock_offset_ns: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., network: _Optional[_Union[NetworkContext, _Mapping]] = ..., findings: _Optional[_Iterable[str]] = ..., session: _Optional[_Union[SessionEvent, _Mapping]] = ..., transcript: _Optional[_Iterable[_Union[TranscriptLine, _Mapping]]] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("kind", "segment", "session_ns", "phase", "attempts", "delay_ns", "downtime_ns", "keepalive_rtt_ns", "resumed", "resume_ns")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_NS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DELAY_NS_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_NS_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_RTT_NS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    RESUME_NS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    segment: int
    session_ns: int
    phase: str
    attempts: int
    delay_ns: int
    downtime_ns: int
    keepalive_rtt_ns: _containers.RepeatedScalarFieldContainer[int]
    resumed: bool
    resume_ns: int
    def __init__(self, kind: _Optional[str] = ..., segment: _Optional[int] = ..., session_ns: _Optional[int] = ..., phase: _Optional[str] = ..., attempts: _Optional[int] = ..., delay_ns: _Optional[int] = ..., downtime_ns: _Optional[int] = ..., keepalive_rtt_ns: _Optional[_Iterable[int]] = ..., resumed: _Optional[bool] = ..., resume_ns: _Optional[int] = ...) -> None: ...

class TranscriptLine(_message.Message):
    __slots__ = ("offset_ns", "direction", "text")
    OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    offset_ns: int
    direction: str
    text: str
    def __init__(self, offset_ns: _Optional[int] = ..., direction: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class NetworkContext(_message.Message):
    __slots__ = ("path", "interface", "network_type", "ssid", "signal_dbm", "source_address", "carrier", "asn")
    PATH_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_TYPE_FIELD_NUMBER: _ClassVar[int]
    SSID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_DBM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CARRIER_FIELD_NUMBER: _ClassVar[int]
    ASN_FIELD_NUMBER: _ClassVar[int]
    path: str
    interface: str
    network_type: str
    ssid: str
    signal_dbm: float
    source_address: str
    carrier: str
    asn: int
    def __init__(self, path: _Optional[str] = ..., interface: _Optional[str] = ..., network_type: _Optional[str] = ..., ssid: _Optional[str] = ..., signal_dbm: _Optional[float] = ..., source_address: _Optional[str] = ..., carrier: _Optional[str] = ..., asn: _Optional[int] = ...) -> None: ...

class Phase(_message.Message):
    __slots__ = ("name", "ok", "start_offset_ns", "duration_ns", "skipped", "message", "clock", "server_duration_ns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_NS_FIELD_NUMBER: _ClassVar[int]
    DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    SERVER_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    start_offset_ns: int
    duration_ns: int
    skipped: bool
    message: str
    clock: str
    server_duration_ns: int
    def __init__(self, name: _Optional[str] = ..., ok: _Optional[bool] = ..., start_offset_ns: _Optional[int] = ..., duration_ns: _Optional[int] = ..., skipped: _Optional[bool] = ..., message: _Optional[str] = ..., clock: _Optional[str] = ..., server_duration_ns: _Optional[int] = ...) -> None: ...

class TLSInfo(_message.Message):
    __slots__ = ("version", "cipher", "alpn", "verified", "verify_error", "subject", "issuer", "sans", "not_after_unix", "days_left")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CIPHER_FIELD_NUMBER: _ClassVar[int]
    ALPN_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    VERIFY_ERROR_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SANS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    DAYS_LEFT_FIELD_NUMBER: _ClassVar[int]
    version: str
    cipher: str
    alpn: str
    verified: bool
    verify_error: str
    subject: str
    issuer: str
    sans: _containers.RepeatedScalarFieldContainer[str]
    not_after_unix: int
    days_left: float
    def __init__(self, version: _Optional[str] = ..., cipher: _Optional[str] = ..., alpn: _Optional[str] = ..., verified: _Optional[bool] = ..., verify_error: _Optional[str] = ..., subject: _Optional[str] = ..., issuer: _Optional[str] = ..., sans: _Optional[_Iterable[str]] = ..., not_after_unix: _Optional[int] = ..., days_left: _Optional[float] = ...) -> None: ...

class DNSInfo(_message.Message):
    __slots__ = ("name", "addresses", "ttl", "srv", "resolver")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    SRV_FIELD_NUMBER: _ClassVar[int]
    RESOLVER_FIELD_NUMBER: _ClassVar[int]
    name: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    ttl: int
    srv: str
    resolver: str
    def __init__(self, name: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., ttl: _Optional[int] = ..., srv: _Optional[str] = ..., resolver: _Optional[str] = ...) -> None: ...
