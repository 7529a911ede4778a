from ipsecd.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecretsRequest(_message.Message):
    __slots__ = ("node", "revision")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    node: str
    revision: int
    def __init__(self, node: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class SecretsReply(_message.Message):
    __slots__ = ("revision", "secrets", "generation")
    class SecretsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    secrets: _containers.ScalarMap[str, bytes]
    generation: int
    def __init__(self, revision: _Optional[int] = ..., secrets: _Optional[_Mapping[str, bytes]] = ..., generation: _Optional[int] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "ack", "status", "answer", "pong")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    status: _types_pb2.NodeStatus
    answer: QueryAnswer
    pong: Pong
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., status: _Optional[_Union[_types_pb2.NodeStatus, _Mapping]] = ..., answer: _Optional[_Union[QueryAnswer, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node", "addresses", "labels", "capabilities", "last_revision", "last_sha256", "directory_version", "directory_digest")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_REVISION_FIELD_NUMBER: _ClassVar[int]
    LAST_SHA256_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    node: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    last_revision: int
    last_sha256: str
    directory_version: int
    directory_digest: bytes
    def __init__(self, node: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., last_revision: _Optional[int] = ..., last_sha256: _Optional[str] = ..., directory_version: _Optional[int] = ..., directory_digest: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("revision", "ok", "error")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    revision: int
    ok: bool
    error: str
    def __init__(self, revision: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class QueryAnswer(_message.Message):
    __slots__ = ("query_id", "status")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    query_id: int
    status: _types_pb2.NodeStatus
    def __init__(self, query_id: _Optional[int] = ..., status: _Optional[_Union[_types_pb2.NodeStatus, _Mapping]] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("snapshot", "update", "directory", "query", "ping", "resume", "secrets_changed", "crl", "directory_delta")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    SECRETS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    CRL_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_DELTA_FIELD_NUMBER: _ClassVar[int]
    snapshot: Snapshot
    update: PolicyUpdate
    directory: NodeDirectory
    query: Query
    ping: Ping
    resume: Resume
    secrets_changed: SecretsChanged
    crl: Crl
    directory_delta: NodeDirectoryDelta
    def __init__(self, snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., update: _Optional[_Union[PolicyUpdate, _Mapping]] = ..., directory: _Optional[_Union[NodeDirectory, _Mapping]] = ..., query: _Optional[_Union[Query, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., resume: _Optional[_Union[Resume, _Mapping]] = ..., secrets_changed: _Optional[_Union[SecretsChanged, _Mapping]] = ..., crl: _Optional[_Union[Crl, _Mapping]] = ..., directory_delta: _Optional[_Union[NodeDirectoryDelta, _Mapping]] = ...) -> None: ...

class PolicyRevision(_message.Message):
    __slots__ = ("revision", "sha256", "text", "created_unix_ms", "policy_digest")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    revision: int
    sha256: str
    text: str
    created_unix_ms: int
    policy_digest: str
    def __init__(self, revision: _Optional[int] = ..., sha256: _Optional[str] = ..., text: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., policy_digest: _Optional[str] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("policy", "directory", "controller")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_FIELD_NUMBER: _ClassVar[int]
    policy: PolicyRevision
    directory: NodeDirectory
    controller: str
    def __init__(self, policy: _Optional[_Union[PolicyRevision, _Mapping]] = ..., directory: _Optional[_Union[NodeDirectory, _Mapping]] = ..., controller: _Optional[str] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ("current_revision", "controller")
    CURRENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_FIELD_NUMBER: _ClassVar[int]
    current_revision: int
    controller: str
    def __init__(self, current_revision: _Optional[int] = ..., controller: _Optional[str] = ...) -> None: ...

class PolicyUpdate(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: PolicyRevision
    def __init__(self, policy: _Optional[_Union[PolicyRevision, _Mapping]] = ...) -> None: ...

class NodeDirectory(_message.Message):
    __slots__ = ("version", "nodes", "digest")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    version: int
    nodes: _containers.RepeatedCompositeFieldContainer[_types_pb2.NodeEntry]
    digest: bytes
    def __init__(self, version: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[_types_pb2.NodeEntry, _Mapping]]] = ..., digest: _Optional[bytes] = ...) -> None: ...

class NodeDirectoryDelta(_message.Message):
    __slots__ = ("base_version", "version", "changed", "removed", "digest")
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    base_version: int
    version: int
    changed: _containers.RepeatedCompositeFieldContainer[_types_pb2.NodeEntry]
    removed: _containers.RepeatedScalarFieldContainer[str]
    digest: bytes
    def __init__(self, base_version: _Optional[int] = ..., version: _Optional[int] = ..., changed: _Optional[_Iterable[_Union[_types_pb2.NodeEntry, _Mapping]]] = ..., removed: _Optional[_Iterable[str]] = ..., digest: _Optional[bytes] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("query_id",)
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    query_id: int
    def __init__(self, query_id: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class SecretsChanged(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class Crl(_message.Message):
    __slots__ = ("pem", "number")
    PEM_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    pem: bytes
    number: int
    def __init__(self, pem: _Optional[bytes] = ..., number: _Optional[int] = ...) -> None: ...
