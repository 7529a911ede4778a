from ipsecd.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutStrategy(_message.Message):
    __slots__ = ("canary_nodes", "canary_count", "batch_count", "batch_percent", "max_unavailable", "pause_seconds", "gate_timeout_seconds")
    CANARY_NODES_FIELD_NUMBER: _ClassVar[int]
    CANARY_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MAX_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PAUSE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GATE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    canary_nodes: _containers.RepeatedScalarFieldContainer[str]
    canary_count: int
    batch_count: int
    batch_percent: int
    max_unavailable: int
    pause_seconds: float
    gate_timeout_seconds: float
    def __init__(self, canary_nodes: _Optional[_Iterable[str]] = ..., canary_count: _Optional[int] = ..., batch_count: _Optional[int] = ..., batch_percent: _Optional[int] = ..., max_unavailable: _Optional[int] = ..., pause_seconds: _Optional[float] = ..., gate_timeout_seconds: _Optional[float] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("text", "filename", "comment", "base_revision", "author", "file_mode", "strategy", "force")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    FILE_MODE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    filename: str
    comment: str
    base_revision: int
    author: str
    file_mode: int
    strategy: RolloutStrategy
    force: bool
    def __init__(self, text: _Optional[str] = ..., filename: _Optional[str] = ..., comment: _Optional[str] = ..., base_revision: _Optional[int] = ..., author: _Optional[str] = ..., file_mode: _Optional[int] = ..., strategy: _Optional[_Union[RolloutStrategy, _Mapping]] = ..., force: _Optional[bool] = ...) -> None: ...

class StartRolloutResponse(_message.Message):
    __slots__ = ("accepted", "revision", "diagnostics", "notes", "compatible", "compat_report", "refused", "rollout", "unchanged")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    COMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    COMPAT_REPORT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    revision: _types_pb2.RevisionMeta
    diagnostics: _containers.RepeatedCompositeFieldContainer[_types_pb2.Diagnostic]
    notes: _containers.RepeatedScalarFieldContainer[str]
    compatible: bool
    compat_report: str
    refused: bool
    rollout: RolloutStatus
    unchanged: bool
    def __init__(self, accepted: _Optional[bool] = ..., revision: _Optional[_Union[_types_pb2.RevisionMeta, _Mapping]] = ..., diagnostics: _Optional[_Iterable[_Union[_types_pb2.Diagnostic, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ..., compatible: _Optional[bool] = ..., compat_report: _Optional[str] = ..., refused: _Optional[bool] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ..., unchanged: _Optional[bool] = ...) -> None: ...

class RolloutNode(_message.Message):
    __slots__ = ("name", "batch", "state", "reason", "applied_revision", "since_unix_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    batch: int
    state: str
    reason: str
    applied_revision: int
    since_unix_ms: int
    def __init__(self, name: _Optional[str] = ..., batch: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., applied_revision: _Optional[int] = ..., since_unix_ms: _Optional[int] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("exists", "id", "state", "from_revision", "to_revision", "rollback_revision", "strategy", "batch", "batches", "nodes", "reason", "author", "created_unix_ms", "updated_unix_ms", "ended_unix_ms", "forced", "forced_plan", "next_batch_unix_ms", "done")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    TO_REVISION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_REVISION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    FORCED_PLAN_FIELD_NUMBER: _ClassVar[int]
    NEXT_BATCH_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    id: int
    state: str
    from_revision: int
    to_revision: int
    rollback_revision: int
    strategy: RolloutStrategy
    batch: int
    batches: int
    nodes: _containers.RepeatedCompositeFieldContainer[RolloutNode]
    reason: str
    author: str
    created_unix_ms: int
    updated_unix_ms: int
    ended_unix_ms: int
    forced: bool
    forced_plan: str
    next_batch_unix_ms: int
    done: bool
    def __init__(self, exists: _Optional[bool] = ..., id: _Optional[int] = ..., state: _Optional[str] = ..., from_revision: _Optional[int] = ..., to_revision: _Optional[int] = ..., rollback_revision: _Optional[int] = ..., strategy: _Optional[_Union[RolloutStrategy, _Mapping]] = ..., batch: _Optional[int] = ..., batches: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[RolloutNode, _Mapping]]] = ..., reason: _Optional[str] = ..., author: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., ended_unix_ms: _Optional[int] = ..., forced: _Optional[bool] = ..., forced_plan: _Optional[str] = ..., next_batch_unix_ms: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class RolloutStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RolloutActionRequest(_message.Message):
    __slots__ = ("author",)
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    author: str
    def __init__(self, author: _Optional[str] = ...) -> None: ...
