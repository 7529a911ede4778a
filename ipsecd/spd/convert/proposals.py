"""Proposals: strongSwan and Libreswan algorithm keywords -> SPD transforms.

strongSwan writes a proposal as dash-separated keywords, several of one kind being
alternatives (``aes256gcm16-aes128gcm16-prfsha384-ecp384``).  Libreswan writes
``ENCRYPT[-HASH][-DH]`` (or ``ENCRYPT-HASH;DH``) with ``+`` between alternatives, where
the hash is also the PRF of IKE (``aes256-sha2_256-dh19``, ``aes_gcm256-sha2_512``).

An SPD transform has one algorithm of each kind, so alternatives expand into one
transform per combination, in preference order.  Every transform is then checked
twice: by the SPD validator (what the language accepts, RFC 8221/8247 refusals) and by
the IKE engine's parser (:mod:`ipsecd.ike.config`), because a connection whose list
holds one transform the engine cannot run is unusable as a whole.  What is dropped is
returned as a message for the caller to place at the input line.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from ...ike.config import ALGORITHM_TOKENS, parse_child_proposal, parse_ike_proposal
from ...ike.constants import ProtocolId
from ...ike.errors import IkeLocalError
from ..errors import SpdError
from ..loader import load_text

__all__ = ["MAX_TRANSFORMS", "Translated", "dh_groups", "translate"]

#: More combinations than this are cut (and said so): an IKE_SA_INIT stays small.
MAX_TRANSFORMS = 32


@dataclass(frozen=True, slots=True)
class _Alg:
    slot: str  # enc | integ | prf | hash | dh | esn | none
    name: str = ""  # the SPD keyword
    aead: bool = False


@dataclass(frozen=True, slots=True)
class _Bad:
    slot: str  # the kind of algorithm it would have been: enc | hash | prf | dh | ?
    reason: str


@dataclass
class Translated:
    """SPD transforms (``None``: keep the SPD's default proposals), what was dropped
    (warnings) and what was filled in (notes)."""

    transforms: list[str] | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_AES = re.compile(
    r"aes(?P<k1>128|192|256)?(?:_?(?P<mode>cbc|ctr|gcm|ccm|gmac))?"
    r"(?:_?(?P<icv>[abc]|8|12|16|64|96|128))?(?:_?(?P<k2>128|192|256))?"
)
_ICV = {"a": 8, "b": 12, "c": 16, "8": 8, "12": 12, "16": 16, "64": 8, "96": 12, "128": 16}
#: AES encryption keywords the SPD language knows (docs/spd.md "proposal").
_SPD_AES = {
    ("cbc", 128, 16): "aes128", ("cbc", 192, 16): "aes192", ("cbc", 256, 16): "aes256",
    ("ctr", 128, 16): "aes128ctr", ("ctr", 256, 16): "aes256ctr",
    ("gcm", 128, 16): "aes128gcm16", ("gcm", 256, 16): "aes256gcm16",
    ("gcm", 128, 8): "aes128gcm8", ("gcm", 256, 12): "aes256gcm12",
}  # fmt: skip

_HASH = {
    "sha1": "sha1", "sha": "sha1", "sha1_96": "sha1",
    "sha256": "sha256", "sha2_256": "sha256", "sha2_256_128": "sha256", "sha2": "sha256",
    "sha384": "sha384", "sha2_384": "sha384", "sha2_384_192": "sha384",
    "sha512": "sha512", "sha2_512": "sha512", "sha2_512_256": "sha512",
    "md5": "md5", "md5_96": "md5",
    "aesxcbc": "aesxcbc", "aes_xcbc": "aesxcbc", "aes128_xcbc": "aesxcbc",
    "aes_xcbc_96": "aesxcbc",
}  # fmt: skip
_HASH_UNSUPPORTED = {
    "md5_128": "truncated-to-128-bit MD5 is not an IKEv2 algorithm",
    "sha1_160": "untruncated SHA-1 is not an IKEv2 algorithm",
    "sha256_96": "SHA-256 truncated to 96 bits (the old Linux bug) is not supported",
    "sha2_256_96": "SHA-256 truncated to 96 bits (the old Linux bug) is not supported",
    "aescmac": "AES-CMAC integrity is not supported",
    "aes_cmac": "AES-CMAC integrity is not supported",
    "aes128gmac": "AES-GMAC is not supported",
    "aes192gmac": "AES-GMAC is not supported",
    "aes256gmac": "AES-GMAC is not supported",
}
_PRF = {
    "prfsha1": "prfsha1", "prfsha256": "prfsha256", "prfsha384": "prfsha384",
    "prfsha512": "prfsha512", "prfmd5": "prfmd5", "prfaesxcbc": "prfaesxcbc",
}  # fmt: skip
_DH = {
    "modp768": "modp768", "modp1024": "modp1024", "modp1536": "modp1536",
    "modp2048": "modp2048", "modp3072": "modp3072", "modp4096": "modp4096",
    "modp6144": "modp6144", "modp8192": "modp8192",
    "dh1": "modp768", "dh2": "modp1024", "dh5": "modp1536", "dh14": "modp2048",
    "dh15": "modp3072", "dh16": "modp4096", "dh17": "modp6144", "dh18": "modp8192",
    "dh19": "ecp256", "dh20": "ecp384", "dh21": "ecp521", "dh31": "curve25519",
    "dh32": "curve448", "ecp256": "ecp256", "ecp384": "ecp384", "ecp521": "ecp521",
    "ecp_256": "ecp256", "ecp_384": "ecp384", "ecp_521": "ecp521",
    "curve25519": "curve25519", "x25519": "curve25519", "curve448": "curve448",
    "x448": "curve448",
}  # fmt: skip
_DH_UNSUPPORTED = {
    **dict.fromkeys(
        ("dh22", "dh23", "dh24", "modp1024s160", "modp2048s224", "modp2048s256"),
        "the RFC 5114 MODP groups are not supported (RFC 8247 2.4: SHOULD NOT)",
    ),
    **dict.fromkeys(
        ("dh25", "dh26", "ecp192", "ecp224", "ecp_192", "ecp_224"),
        "NIST curves smaller than P-256 are not supported",
    ),
    **dict.fromkeys(
        ("dh27", "dh28", "dh29", "dh30", "ecp224bp", "ecp256bp", "ecp384bp", "ecp512bp"),
        "Brainpool curves are not supported",
    ),
}
_ENC_OTHER = {
    "chacha20poly1305": _Alg("enc", "chacha20poly1305", aead=True),
    "chacha20_poly1305": _Alg("enc", "chacha20poly1305", aead=True),
    "3des": _Alg("enc", "3des"),
    "des": _Alg("enc", "des"),
    "blowfish": _Alg("enc", "blowfish"),
    "blowfish128": _Alg("enc", "blowfish"),
    "blowfish192": _Alg("enc", "blowfish"),
    "blowfish256": _Alg("enc", "blowfish"),
}
_ENC_UNSUPPORTED = ("camellia", "serpent", "twofish", "cast", "null_auth_aes_gmac", "chacha20")


def _classify(token: str, style: str) -> _Alg | _Bad:
    """One keyword -> its kind and SPD spelling, or why it cannot be carried."""
    found = _lookup(token, style)
    if isinstance(found, str):
        return _Bad(_bad_slot(token.strip().lower()), found)
    return found


def _bad_slot(t: str) -> str:
    if t in _DH_UNSUPPORTED or t.startswith(("mlkem", "ke", "dh", "modp", "ecp", "curve")):
        return "dh"
    if t.startswith("prf"):
        return "prf"
    if t in _HASH_UNSUPPORTED or t.startswith(("sha", "md5", "aesxcbc", "aescmac", "aes_cmac")):
        return "hash"
    if _AES.fullmatch(t) or t.startswith((*_ENC_UNSUPPORTED, "des", "3des", "blowfish")):
        return "enc"
    return "?"


def _lookup(token: str, style: str) -> _Alg | str:
    t = token.strip().lower()
    if t in ("none", "null") and style == "libreswan":
        return _Alg("none")
    if t == "null":
        return _Alg("enc", "null")
    if t in ("esn", "noesn"):
        return _Alg("esn", t)
    if t in _HASH:
        return _Alg("integ" if style == "strongswan" else "hash", _HASH[t])
    if t in _HASH_UNSUPPORTED:
        return _HASH_UNSUPPORTED[t]
    if t in _PRF:
        return _Alg("prf", _PRF[t])
    if t.startswith("prf"):
        return f"PRF '{token}' is not supported"
    if t in _DH:
        return _Alg("dh", _DH[t])
    if t in _DH_UNSUPPORTED:
        return _DH_UNSUPPORTED[t]
    if t.startswith(("mlkem", "ke1_", "ke2_", "ke3_", "ke4_", "ke5_", "ke6_", "ke7_")):
        return "additional (post-quantum) key exchanges (RFC 9370) are not supported"
    if t in _ENC_OTHER:
        return _ENC_OTHER[t]
    if t.startswith(_ENC_UNSUPPORTED):
        return f"'{token}' is not among the SPD's algorithms (not recommended by RFC 8221)"
    m = _AES.fullmatch(t)
    if m is not None:
        return _aes(token, m, style)
    return f"unknown algorithm '{token}'"


def _aes(token: str, m: re.Match[str], style: str) -> _Alg | str:
    mode = m.group("mode") or "cbc"
    k1, icv_text, k2 = m.group("k1"), m.group("icv"), m.group("k2")
    if icv_text in ("64", "96", "128") and k1 is None and k2 is None:
        k2, icv_text = icv_text, None  # Libreswan: aes_ctr128, aes_gcm_128 (key bits)
    if icv_text is not None and mode not in ("gcm", "ccm"):
        return f"unknown algorithm '{token}'"
    bits = int(k1 or k2 or (256 if style == "libreswan" else 128))
    icv = _ICV[icv_text] if icv_text is not None else 16
    if mode == "ccm":
        return "AES-CCM is not supported"
    if mode == "gmac":
        return "AES-GMAC (integrity-only ESP) is not supported"
    name = _SPD_AES.get((mode, bits, icv))
    if name is None:
        what = {"cbc": "AES-CBC", "ctr": "AES-CTR", "gcm": f"AES-GCM with a {icv}-octet ICV"}
        return f"{what[mode]} with {bits}-bit keys ('{token}') is not among the SPD's algorithms"
    return _Alg("enc", name, aead=mode == "gcm")


# Libreswan fills in what a proposal leaves out (ipsec.conf(5) "ike="); these are its
# defaults as far as the SPD and ipsecd's IKE engine can run them.
_LIBRESWAN_IKE_HASH = ["sha512", "sha256"]
_LIBRESWAN_IKE_DH = ["ecp256", "ecp384", "ecp521", "curve25519", "modp2048", "modp3072"]
_LIBRESWAN_ESP_INTEG = ["sha512", "sha256"]


@dataclass
class _Parts:
    enc: list[_Alg] = field(default_factory=list)
    integ: list[str] = field(default_factory=list)
    prf: list[str] = field(default_factory=list)
    dh: list[str] = field(default_factory=list)
    hashes: list[list[str]] = field(default_factory=list)  # Libreswan hash components
    esn: list[str] = field(default_factory=list)
    none_integ: bool = False
    named: set[str] = field(default_factory=set)  # kinds named, carried or not


def _add(items: list[str], name: str) -> None:
    if name not in items:
        items.append(name)


def translate(
    text: str, kind: str, style: str, *, pfs_groups: list[str] | None = None
) -> Translated:
    """``text`` (a comma-separated proposal list) as SPD transforms for ``kind`` (ike,
    esp, ah).  ``style``: strongswan | libreswan.  ``pfs_groups``: DH groups to add to
    ESP/AH transforms that name none (Libreswan's ``pfs=yes``)."""
    out = Translated([])
    proposals = [p.strip() for p in text.split(",") if p.strip()]
    default = False
    transforms: list[str] = []
    for proposal in proposals:
        proposal = proposal.rstrip("!").strip()
        if proposal.lower() == "default":
            default = True
            continue
        parts = _split(proposal, kind, style, out)
        if parts is None:
            continue
        for t in _expand(proposal, parts, kind, style, out, pfs_groups):
            if t not in transforms:
                transforms.append(t)
    if default:
        if transforms:
            out.warnings.append(
                f"'default' in the {kind} proposals ({text.strip()}) adds the daemon's "
                "built-in proposals: not carried, only the listed ones are"
            )
        else:
            out.transforms = None
            out.notes.append(f"{kind} proposals 'default': the SPD's default proposals")
            return out
    if len(transforms) > MAX_TRANSFORMS:
        out.warnings.append(
            f"the {kind} proposals expand to {len(transforms)} transforms; the first "
            f"{MAX_TRANSFORMS} are kept"
        )
        transforms = transforms[:MAX_TRANSFORMS]
    out.transforms = _runnable(transforms, kind, out)
    if not out.transforms:
        out.transforms = None
        if proposals:
            out.warnings.append(
                f"none of the {kind} proposals '{text.strip()}' can be carried: the "
                "SPD's default proposals are used instead"
            )
    return out


def _split(proposal: str, kind: str, style: str, out: Translated) -> _Parts | None:
    parts = _Parts()
    if style == "libreswan":
        main, _, dh_text = proposal.partition(";")
        components = [c for c in main.split("-") if c]
        if dh_text:
            components.append(dh_text)
        groups = [[a for a in c.split("+") if a] for c in components]
    else:
        groups = [[t] for t in proposal.split("-") if t]
    for index, alternatives in enumerate(groups):
        hashes: list[str] = []
        for token in alternatives:
            if style == "libreswan" and index == 0 and kind != "ah" and token.lower() == "null":
                alg: _Alg | _Bad = _Alg("enc", "null")
            else:
                alg = _classify(token, style)
            if isinstance(alg, _Bad):
                out.warnings.append(
                    f"{kind} proposal '{proposal}': '{token}' dropped: {alg.reason}"
                )
                parts.named.add(alg.slot)
                continue
            parts.named.add("hash" if alg.slot in ("integ", "prf") else alg.slot)
            if alg.slot == "enc":
                if alg not in parts.enc:
                    parts.enc.append(alg)
            elif alg.slot == "integ":
                _add(parts.integ, alg.name)
            elif alg.slot == "hash":
                _add(hashes, alg.name)
            elif alg.slot == "prf":
                _add(parts.prf, alg.name)
            elif alg.slot == "dh":
                _add(parts.dh, alg.name)
            elif alg.slot == "esn":
                _add(parts.esn, alg.name)
            else:
                parts.none_integ = True
        if hashes:
            parts.hashes.append(hashes)
    if "esn" in parts.esn:
        out.warnings.append(
            f"{kind} proposal '{proposal}': extended sequence numbers (esn) are not "
            "carried: ipsecd negotiates 'noesn'"
        )
    if kind == "ah":
        integ = parts.integ + [h for group in parts.hashes for h in group]
        parts.integ = list(dict.fromkeys(integ))
        return parts
    if not parts.enc:
        out.warnings.append(
            f"{kind} proposal '{proposal}' dropped: no encryption algorithm left that the "
            "SPD can carry"
        )
        return None
    return parts


def _expand(
    proposal: str,
    p: _Parts,
    kind: str,
    style: str,
    out: Translated,
    pfs_groups: list[str] | None,
) -> list[str]:
    """One SPD transform per combination of the proposal's alternatives."""
    if kind == "ah":
        integs = p.integ
        if not integs:
            out.warnings.append(f"ah proposal '{proposal}' dropped: no integrity algorithm")
            return []
        if not p.dh and "dh" in p.named:
            out.warnings.append(
                f"ah proposal '{proposal}' dropped: none of its DH groups can be carried"
            )
            return []
        dhs = p.dh or list(pfs_groups or []) or [""]
        return ["-".join(x for x in combo if x) for combo in itertools.product(integs, dhs)]
    hashes = p.hashes
    result: list[str] = []
    dropped_integ = False
    for enc in p.enc:
        if kind == "ike":
            got_prfs, got_integs = _ike_hashes(proposal, p, enc, style, out)
            if got_prfs is None or got_integs is None:
                continue
            prfs, integs = got_prfs, got_integs
            dhs = p.dh
            if not dhs:
                if style == "libreswan" and "dh" not in p.named:
                    dhs = _LIBRESWAN_IKE_DH
                    out.notes.append(
                        f"ike proposal '{proposal}' names no DH group: Libreswan's defaults "
                        f"{'+'.join(dhs)} are used"
                    )
                else:
                    out.warnings.append(
                        f"ike proposal '{proposal}' dropped: an IKE proposal needs a DH group"
                        + (" and none of its groups can be carried" if "dh" in p.named else "")
                    )
                    return []
        else:
            prfs = [""]
            integ_names = p.integ + [h for group in hashes for h in group]
            if enc.aead:
                dropped_integ = dropped_integ or bool(integ_names)
                integs = [""]
            elif integ_names:
                integs = integ_names
            elif enc.name == "null" or style != "libreswan" or p.none_integ or "hash" in p.named:
                out.warnings.append(
                    f"{kind} proposal '{proposal}': '{enc.name}' without an integrity "
                    "algorithm dropped (RFC 8221 3)"
                )
                continue
            else:
                integs = _LIBRESWAN_ESP_INTEG
                out.notes.append(
                    f"esp proposal '{proposal}' names no integrity algorithm: Libreswan's "
                    f"defaults {'+'.join(integs)} are used"
                )
            if not p.dh and "dh" in p.named:
                out.warnings.append(
                    f"{kind} proposal '{proposal}' dropped: none of its DH groups can be carried"
                )
                return []
            dhs = p.dh or list(pfs_groups or []) or [""]
        for integ, prf, dh in itertools.product(integs, prfs, dhs):
            result.append("-".join(x for x in (enc.name, integ, prf, dh) if x))
    if dropped_integ and all(e.aead for e in p.enc):
        out.warnings.append(
            f"{kind} proposal '{proposal}': an AEAD cipher takes no integrity algorithm; "
            "the integrity algorithm is dropped"
        )
    return result


def _ike_hashes(
    proposal: str, p: _Parts, enc: _Alg, style: str, out: Translated
) -> tuple[list[str] | None, list[str] | None]:
    """(PRFs, integrity algorithms) of one IKE encryption alternative; ``[""]`` stands
    for "none named" (the engine derives the PRF from the integrity algorithm)."""
    if style == "libreswan":
        # ENCRYPT-PRF-DH (the PRF names the integrity too), or ENCRYPT-PRF-INTEG-DH;
        # strongSwan spellings (prfsha384, as in strongSwan's own ipsec.conf) also work
        prf_h = p.hashes[0] if p.hashes else []
        integ_h = p.hashes[1] if len(p.hashes) > 1 else prf_h
        named_prfs = p.prf or ["prf" + h for h in prf_h]
        if "hash" in p.named and not (p.prf or p.integ or p.hashes):
            out.warnings.append(
                f"ike proposal '{proposal}' dropped: none of its hash algorithms can be carried"
            )
            return None, None
        if enc.aead:
            if not named_prfs:
                named_prfs = ["prf" + h for h in _LIBRESWAN_IKE_HASH]
                out.notes.append(
                    f"ike proposal '{proposal}' names no PRF: Libreswan's defaults "
                    f"{'+'.join(_LIBRESWAN_IKE_HASH)} are used"
                )
            return named_prfs, [""]
        integs = p.integ or integ_h
        if not integs:
            integs = _LIBRESWAN_IKE_HASH
            out.notes.append(
                f"ike proposal '{proposal}' names no integrity algorithm: Libreswan's "
                f"defaults {'+'.join(integs)} are used"
            )
        prfs = p.prf or (["prf" + h for h in prf_h] if len(p.hashes) > 1 else [""])
        return prfs, integs
    if enc.aead:
        if p.integ and not p.prf:
            out.warnings.append(
                f"ike proposal '{proposal}': an AEAD cipher takes no integrity algorithm "
                "and needs a PRF; dropped"
            )
            return None, None
        if not p.prf:
            out.warnings.append(
                f"ike proposal '{proposal}' dropped: an AEAD cipher needs a PRF (prfsha256, ...)"
            )
            return None, None
        return p.prf, [""]
    if not p.integ:
        out.warnings.append(
            f"ike proposal '{proposal}' dropped: '{enc.name}' needs an integrity algorithm"
        )
        return None, None
    return p.prf or [""], p.integ


def dh_groups(transforms: list[str]) -> list[str]:
    """The DH groups named by SPD transforms, in order of first appearance."""
    groups: list[str] = []
    for t in transforms:
        for part in t.split("-"):
            if part in _DH.values() and part not in groups:
                groups.append(part)
    return groups


def _runnable(transforms: list[str], kind: str, out: Translated) -> list[str]:
    """Transforms both the SPD validator and the IKE engine accept; the others are
    dropped with the reason (unless none is left: then the reason only)."""
    accepted: list[str] = []
    for t in transforms:
        problem = _spd_problem(t, kind)
        if problem:
            out.warnings.append(f"{kind} transform '{t}' dropped: {problem}")
        else:
            accepted.append(t)
    runnable = [t for t in accepted if not _engine_problem(t, kind)]
    if runnable or not accepted:
        for t in accepted:
            if t not in runnable:
                out.warnings.append(f"{kind} transform '{t}' dropped: {_engine_problem(t, kind)}")
        return runnable
    for t in accepted:
        out.warnings.append(
            f"{kind} transform '{t}' is kept although {_engine_problem(t, kind)}: the "
            "connection will be reported unusable until that changes"
        )
    return accepted


def _spd_problem(transform: str, kind: str) -> str:
    try:
        load_text(f"proposal {kind} p {transform};\n", "<proposal>")
    except SpdError as exc:
        errors = [d.message for d in exc.diagnostics if d.is_error]
        return errors[0] if errors else "refused by the SPD validator"
    return ""


def _engine_problem(transform: str, kind: str) -> str:
    unknown = [t for t in transform.split("-") if t not in ALGORITHM_TOKENS]
    if unknown:
        return "the ipsecd IKE engine does not implement " + ", ".join(f"'{u}'" for u in unknown)
    try:
        if kind == "ike":
            parse_ike_proposal(transform)
        else:
            parse_child_proposal(transform, ProtocolId.AH if kind == "ah" else ProtocolId.ESP)
    except IkeLocalError as exc:
        return f"the ipsecd IKE engine refuses it ({exc})"
    return ""
