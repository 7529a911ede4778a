"""ipsecd.ike.pki against strongSwan's ``pki`` tool (Debian ``strongswan-pki``).

* CERTREQ data (RFC 7296 3.7) is the SHA-1 of each anchor's SubjectPublicKeyInfo: the
  hash we compute must be the "keyid (SHA-1 of subjectPublicKeyInfo)" strongSwan
  computes for the same certificate (which is what charon puts in its CERTREQs and
  looks ours up by).
* For the cases where both define an answer, ``TrustStore.validate`` and
  ``pki --verify`` (which uses strongSwan's own path and CRL checking) agree on trusted
  or not.  ``pki --verify`` reads the clock, so these certificates are made around
  the real time and validated at it.

The tool missing is a failure (install it), never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from ipsecd.ike.pki import CertificateError, TrustStore, spki_sha1
from tests.support.pki import DAY, Issued, ca, crl, end_entity, make_key, write_pem

PKI_BIN = "/usr/bin/pki"


@pytest.fixture(scope="module")
def pki_tool() -> str:
    found = PKI_BIN if Path(PKI_BIN).exists() else shutil.which("pki")
    if not found:
        pytest.fail(
            f"{PKI_BIN} missing: install Debian strongswan-pki (apt-get install strongswan-pki)"
        )
    return found


def run_pki(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("kind", ["p256", "p384", "p521", "rsa2048", "ed25519"])
def test_certreq_hash_is_strongswans_spki_keyid(pki_tool: str, tmp_path: Path, kind: str) -> None:
    root = ca(f"Interop Root {kind}", key=kind)
    path = write_pem(tmp_path / "root.pem", root.cert)
    out = run_pki(
        pki_tool, "--keyid", "--type", "x509", "--in", str(path), "--id", "spki", "--format", "hex"
    )
    assert out.returncode == 0, out.stderr
    theirs = bytes.fromhex(out.stdout.strip().splitlines()[-1].replace(":", ""))
    assert theirs == spki_sha1(root.cert)
    assert TrustStore((root.cert,)).certreq_data() == theirs
    # and the pretty form names it the subjectPublicKeyInfo hash
    pretty = run_pki(pki_tool, "--keyid", "--type", "x509", "--in", str(path)).stdout
    assert "SHA-1 of subjectPublicKeyInfo" in pretty
    assert ":".join(f"{b:02x}" for b in theirs) in pretty


def _case(name: str, now: float) -> tuple[Issued, Issued, list[x509.CertificateRevocationList]]:
    """(anchor, end entity, CRLs) for one verdict case."""
    root = ca(
        f"Verdict Root {name}",
        key="rsa2048" if "rsa" in name else "p256",
        not_before=now - 30 * DAY,
        not_after=now + 300 * DAY,
    )
    times = {"not_before": now - DAY, "not_after": now + 30 * DAY}
    crls: list[x509.CertificateRevocationList] = []
    if name == "expired":
        times = {"not_before": now - 30 * DAY, "not_after": now - DAY}
    if name == "not-yet-valid":
        times = {"not_before": now + DAY, "not_after": now + 30 * DAY}
    if name == "forged":
        ee = end_entity(root, f"{name}.test", sign_with=make_key("p256", "interop forger"), **times)
    elif name == "unknown-ca":
        other = ca("Verdict Other Root", not_before=now - DAY, not_after=now + 300 * DAY)
        ee = end_entity(other, f"{name}.test", **times)
    else:
        ee = end_entity(
            root, f"{name}.test", key="ed25519" if "ed25519" in name else "p384", **times
        )
    if name in ("revoked", "revoked-stale-crl", "good-crl"):
        serial = ee.cert.serial_number + (1 if name == "good-crl" else 0)
        stale = name == "revoked-stale-crl"
        crls.append(
            crl(
                root,
                [(serial, now - 2 * DAY)],
                last_update=now - (20 if stale else 1) * DAY,
                next_update=now + (-10 if stale else 7) * DAY,
            )
        )
    return root, ee, crls


VERDICTS = {
    "good": True,
    "good-rsa": True,
    "good-ed25519": True,
    "good-crl": True,
    "expired": False,
    "not-yet-valid": False,
    "forged": False,
    "unknown-ca": False,
    "revoked": False,
    "revoked-stale-crl": False,
}


@pytest.mark.parametrize("name", list(VERDICTS))
def test_verdicts_agree_with_pki_verify(pki_tool: str, tmp_path: Path, name: str) -> None:
    now = time.time()
    root, ee, crls = _case(name, now)
    args = [
        "--verify",
        "--in",
        str(write_pem(tmp_path / "ee.pem", ee.cert)),
        "--cacert",
        str(write_pem(tmp_path / "ca.pem", root.cert)),
    ]
    for n, item in enumerate(crls):
        args += ["--crl", str(write_pem(tmp_path / f"crl{n}.pem", item))]
    out = run_pki(pki_tool, *args)
    strongswan_trusts = out.returncode == 0
    store = TrustStore((root.cert,), crls=tuple(crls))
    try:
        store.validate(ee.cert, [], now)
        ours = True
    except CertificateError:
        ours = False
    assert strongswan_trusts == VERDICTS[name], out.stdout + out.stderr
    assert ours == VERDICTS[name]
