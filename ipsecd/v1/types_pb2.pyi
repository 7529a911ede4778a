from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Health(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_UNSPECIFIED: _ClassVar[Health]
    HEALTH_OK: _ClassVar[Health]
    HEALTH_DEGRADED: _ClassVar[Health]
    HEALTH_FAILING: _ClassVar[Health]
HEALTH_UNSPECIFIED: Health
HEALTH_OK: Health
HEALTH_DEGRADED: Health
HEALTH_FAILING: Health

class Diagnostic(_message.Message):
    __slots__ = ("file", "line", "column", "message", "hint", "rendered")
    FILE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    file: str
    line: int
    column: int
    message: str
    hint: str
    rendered: str
    def __init__(self, file: _Optional[str] = ..., line: _Optional[int] = ..., column: _Optional[int] = ..., message: _Optional[str] = ..., hint: _Optional[str] = ..., rendered: _Optional[str] = ...) -> None: ...

class RevisionMeta(_message.Message):
    __slots__ = ("revision", "author", "created_unix_ms", "sha256", "comment", "base_revision", "rollback_of", "filename", "policy_digest")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    revision: int
    author: str
    created_unix_ms: int
    sha256: str
    comment: str
    base_revision: int
    rollback_of: int
    filename: str
    policy_digest: str
    def __init__(self, revision: _Optional[int] = ..., author: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., sha256: _Optional[str] = ..., comment: _Optional[str] = ..., base_revision: _Optional[int] = ..., rollback_of: _Optional[int] = ..., filename: _Optional[str] = ..., policy_digest: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("applied_revision", "health", "ike_sas", "child_sas", "detail", "reported_unix_ms", "revision_health")
    APPLIED_REVISION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    IKE_SAS_FIELD_NUMBER: _ClassVar[int]
    CHILD_SAS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REPORTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVISION_HEALTH_FIELD_NUMBER: _ClassVar[int]
    applied_revision: int
    health: Health
    ike_sas: int
    child_sas: int
    detail: str
    reported_unix_ms: int
    revision_health: RevisionHealth
    def __init__(self, applied_revision: _Optional[int] = ..., health: _Optional[_Union[Health, str]] = ..., ike_sas: _Optional[int] = ..., child_sas: _Optional[int] = ..., detail: _Optional[str] = ..., reported_unix_ms: _Optional[int] = ..., revision_health: _Optional[_Union[RevisionHealth, _Mapping]] = ...) -> None: ...

class RevisionHealth(_message.Message):
    __slots__ = ("revision", "refused", "refused_error", "expected", "established", "pending", "errors")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    refused: int
    refused_error: str
    expected: int
    established: int
    pending: _containers.RepeatedScalarFieldContainer[str]
    errors: int
    def __init__(self, revision: _Optional[int] = ..., refused: _Optional[int] = ..., refused_error: _Optional[str] = ..., expected: _Optional[int] = ..., established: _Optional[int] = ..., pending: _Optional[_Iterable[str]] = ..., errors: _Optional[int] = ...) -> None: ...

class NodeEntry(_message.Message):
    __slots__ = ("name", "addresses", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...
