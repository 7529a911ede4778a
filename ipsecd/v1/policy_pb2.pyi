from ipsecd.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushRequest(_message.Message):
    __slots__ = ("text", "filename", "comment", "base_revision", "author", "file_mode")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    FILE_MODE_FIELD_NUMBER: _ClassVar[int]
    text: str
    filename: str
    comment: str
    base_revision: int
    author: str
    file_mode: int
    def __init__(self, text: _Optional[str] = ..., filename: _Optional[str] = ..., comment: _Optional[str] = ..., base_revision: _Optional[int] = ..., author: _Optional[str] = ..., file_mode: _Optional[int] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("accepted", "revision", "diagnostics", "unchanged", "notes")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    revision: _types_pb2.RevisionMeta
    diagnostics: _containers.RepeatedCompositeFieldContainer[_types_pb2.Diagnostic]
    unchanged: bool
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, accepted: _Optional[bool] = ..., revision: _Optional[_Union[_types_pb2.RevisionMeta, _Mapping]] = ..., diagnostics: _Optional[_Iterable[_Union[_types_pb2.Diagnostic, _Mapping]]] = ..., unchanged: _Optional[bool] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("revision", "show_secrets")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SHOW_SECRETS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    show_secrets: bool
    def __init__(self, revision: _Optional[int] = ..., show_secrets: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("meta", "text", "redacted", "current_revision", "backup_revision")
    META_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REDACTED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    BACKUP_REVISION_FIELD_NUMBER: _ClassVar[int]
    meta: _types_pb2.RevisionMeta
    text: str
    redacted: bool
    current_revision: int
    backup_revision: int
    def __init__(self, meta: _Optional[_Union[_types_pb2.RevisionMeta, _Mapping]] = ..., text: _Optional[str] = ..., redacted: _Optional[bool] = ..., current_revision: _Optional[int] = ..., backup_revision: _Optional[int] = ...) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("text", "filename", "file_mode")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    FILE_MODE_FIELD_NUMBER: _ClassVar[int]
    text: str
    filename: str
    file_mode: int
    def __init__(self, text: _Optional[str] = ..., filename: _Optional[str] = ..., file_mode: _Optional[int] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("ok", "diagnostics")
    OK_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    diagnostics: _containers.RepeatedCompositeFieldContainer[_types_pb2.Diagnostic]
    def __init__(self, ok: _Optional[bool] = ..., diagnostics: _Optional[_Iterable[_Union[_types_pb2.Diagnostic, _Mapping]]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("revisions", "current_revision")
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[_types_pb2.RevisionMeta]
    current_revision: int
    def __init__(self, revisions: _Optional[_Iterable[_Union[_types_pb2.RevisionMeta, _Mapping]]] = ..., current_revision: _Optional[int] = ...) -> None: ...

class DiffRequest(_message.Message):
    __slots__ = ("a", "b", "show_secrets")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    SHOW_SECRETS_FIELD_NUMBER: _ClassVar[int]
    a: int
    b: int
    show_secrets: bool
    def __init__(self, a: _Optional[int] = ..., b: _Optional[int] = ..., show_secrets: _Optional[bool] = ...) -> None: ...

class DiffResponse(_message.Message):
    __slots__ = ("unified_diff", "redacted")
    UNIFIED_DIFF_FIELD_NUMBER: _ClassVar[int]
    REDACTED_FIELD_NUMBER: _ClassVar[int]
    unified_diff: str
    redacted: bool
    def __init__(self, unified_diff: _Optional[str] = ..., redacted: _Optional[bool] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("revision", "comment", "author", "base_revision")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    BASE_REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    comment: str
    author: str
    base_revision: int
    def __init__(self, revision: _Optional[int] = ..., comment: _Optional[str] = ..., author: _Optional[str] = ..., base_revision: _Optional[int] = ...) -> None: ...

class SetSecretRequest(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class SetSecretResponse(_message.Message):
    __slots__ = ("changed", "used_by")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    USED_BY_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    used_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, changed: _Optional[bool] = ..., used_by: _Optional[_Iterable[str]] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SecretInfo(_message.Message):
    __slots__ = ("name", "size", "author", "updated_unix_ms", "literal", "in_use")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LITERAL_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    author: str
    updated_unix_ms: int
    literal: bool
    in_use: bool
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., author: _Optional[str] = ..., updated_unix_ms: _Optional[int] = ..., literal: _Optional[bool] = ..., in_use: _Optional[bool] = ...) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretInfo]
    def __init__(self, secrets: _Optional[_Iterable[_Union[SecretInfo, _Mapping]]] = ...) -> None: ...

class DeleteSecretRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteSecretResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
