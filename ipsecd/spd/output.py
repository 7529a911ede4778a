"""Renderings of a NodeConfig: a JSON-able dict and a setkey-like text listing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .model import ManualSa, Selector, Template, plain
from .secrets import REDACTED, KeyMaterial, Secret

if TYPE_CHECKING:
    from .compiler import IkeConnection, KernelPolicy, NodeConfig

__all__ = ["config_to_dict", "config_to_text"]


def config_to_dict(cfg: NodeConfig, *, redact: bool = True) -> dict[str, Any]:
    mode = "redact" if redact else "reveal"
    return {
        "node": cfg.node,
        "defaults": plain(cfg.defaults),
        "policies": [plain(p) for p in cfg.policies],
        "sas": [plain(s, secrets=mode) for s in cfg.sas],
        "connections": [plain(c, secrets=mode) for c in cfg.connections],
        "warnings": list(cfg.warnings),
    }


def config_to_text(cfg: NodeConfig, *, redact: bool = True) -> str:
    d = cfg.defaults
    lines = [
        f"# node {cfg.node}",
        f"defaults def_policy={d.def_policy} esp_trans_deflev={d.esp_trans_deflev} "
        f"esp_net_deflev={d.esp_net_deflev} ah_trans_deflev={d.ah_trans_deflev} "
        f"ah_net_deflev={d.ah_net_deflev} dfbit={d.dfbit} ecn={_onoff(d.ecn)} "
        f"log_unmatched={_onoff(d.log_unmatched)} debug={_onoff(d.debug)} "
        f"message={d.message_level} socket_policy=ike:{d.socket_policy_ike},"
        f"control:{d.socket_policy_control}",
    ]
    lines += [_policy_text(p) for p in cfg.policies]
    lines += [_sa_text(s, redact) for s in cfg.sas]
    lines += [_conn_text(c, redact) for c in cfg.connections]
    lines += [f"# warning: {w}" for w in cfg.warnings]
    return "\n".join(lines) + "\n"


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def _sel(s: Selector) -> str:
    proto = str(s.proto) if s.proto else "any"
    icmp = ""
    if s.icmp_type is not None:
        icmp = f" {s.icmp_type}" + (f",{s.icmp_code}" if s.icmp_code is not None else "")
    return f"{s.src}[{s.sport or 'any'}] {s.dst}[{s.dport or 'any'}] {proto}{icmp}"


def _tmpl(t: Template) -> str:
    ends = f"{t.src}-{t.dst}" if t.src is not None and t.dst is not None else ""
    level = f"unique:{t.reqid}" if t.level.value == "unique" and t.reqid else t.level.value
    reqid = f"#reqid={t.reqid}" if t.reqid and t.level.value != "unique" else ""
    return f"{t.proto.value}/{t.mode.value}/{ends}/{level}{reqid}"


def _policy_text(p: KernelPolicy) -> str:
    action = {"allow": "none", "block": "discard", "ipsec": "ipsec"}[p.action.value]
    reqs = "".join(" " + _tmpl(t) for t in p.templates)
    return (
        f"policy {_sel(p.selector)} -P {p.direction.value} prio {p.priority} {action}{reqs}"
        f"  # {p.origin}"
    )


def _key(k: KeyMaterial | None, redact: bool) -> str:
    if k is None:
        return ""
    if isinstance(k, Secret):
        return " " + (REDACTED if redact else "0x" + k.reveal().hex())
    return f" {k}"


def _sa_text(s: ManualSa, redact: bool) -> str:
    parts = [f"sa {s.proto.value} 0x{s.spi:x} {s.src} -> {s.dst} mode {s.mode.value}"]
    if s.reqid:
        parts.append(f"reqid {s.reqid}")
    if s.replay:
        parts.append(f"replay {s.replay}")
    if s.enc:
        parts.append(f"enc {s.enc}{_key(s.enc_key, redact)}")
    if s.auth:
        parts.append(f"auth {s.auth}{_key(s.auth_key, redact)}")
    if s.comp:
        parts.append(f"comp {s.comp}" + (" raw-cpi" if s.raw_cpi else ""))
    lt = s.lifetime
    if lt.hard_seconds or lt.soft_seconds or lt.hard_bytes or lt.soft_bytes:
        parts.append(
            f"lifetime {lt.soft_seconds}/{lt.hard_seconds}s {lt.soft_bytes}/{lt.hard_bytes}B"
        )
    parts += list(s.flags)
    return " ".join(parts) + f"  # {s.loc.short()}"


def _conn_text(c: IkeConnection, redact: bool) -> str:
    auth = c.auth + (_key(c.psk, redact) if c.auth == "psk" else "")
    for word, value in (("ca", c.auth_ca), ("cert", c.auth_cert), ("key", c.auth_key)):
        if value is not None:
            auth += f' {word} "{value}"'
    if c.auth == "certificate" and c.send_cert != "always":
        auth += f" sendcert {c.send_cert}"
    if c.legacy_auth:
        auth += " legacy"
    lts = ",".join(f"{t.prefix}[{t.port or 'any'}]" for t in c.local_ts)
    rts = ",".join(f"{t.prefix}[{t.port or 'any'}]" for t in c.remote_ts)
    role = "initiator" if c.initiator else "responder"
    return (
        f"conn {c.name} {c.local_addr} <-> {c.remote_addr} {role} {c.mode.value} "
        f"{'+'.join(p.value for p in c.protocols)} level {c.level.value} reqid {c.reqid} "
        f"ike {','.join(c.ike_proposals)} esp {','.join(c.esp_proposals) or '-'} "
        f"ah {','.join(c.ah_proposals) or '-'} auth {auth} ids {c.local_id}/{c.remote_id} "
        f"ts {lts} === {rts} lifetimes {c.ike_lifetime}s/{c.child_lifetime}s dpd {c.dpd}s "
        f"start {c.start}{' external' if c.external else ''}  # {c.origin}"
    )
