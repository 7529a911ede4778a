"""The SPD language: parse -> model -> validate -> compile per node (pure code).

Public API (other components code against these names)::

    load_text(text, filename="<string>", *, file_mode=None) -> Policy
    load_file(path) -> Policy                      # passes the file's mode
    load_nodes_file(path) -> list[NodeInfo]
    compile_node(policy, node, directory) -> NodeConfig
    check_expanded(policy, directory) -> list[Diagnostic]   # per-node findings, merged
    SpdError(.diagnostics), Diagnostic(.render()), Secret, SecretRef

Only :class:`SpdError` ever escapes the loaders.  See docs/spd.md for the language.
"""

from .check import check_expanded
from .compiler import IkeConnection, KernelPolicy, NodeConfig, TrafficSelector, compile_node
from .errors import Diagnostic, Severity, SpdError
from .loader import load_file, load_text
from .model import (
    Action,
    Connection,
    Defaults,
    Direction,
    IpsecProto,
    Level,
    ManualSa,
    Mode,
    Peer,
    Policy,
    Selector,
    Template,
)
from .nodes import NodeInfo, load_nodes_file, load_nodes_text
from .secrets import Secret, SecretRef

__all__ = [
    "Action",
    "Connection",
    "Defaults",
    "Diagnostic",
    "Direction",
    "IkeConnection",
    "IpsecProto",
    "KernelPolicy",
    "Level",
    "ManualSa",
    "Mode",
    "NodeConfig",
    "NodeInfo",
    "Peer",
    "Policy",
    "Secret",
    "SecretRef",
    "Selector",
    "Severity",
    "SpdError",
    "Template",
    "TrafficSelector",
    "check_expanded",
    "compile_node",
    "load_file",
    "load_nodes_file",
    "load_nodes_text",
    "load_text",
]
