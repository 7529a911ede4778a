#!/usr/bin/env bash
# Install the third-party IKEv2 peers of the kernel lab next to strongSwan:
# Libreswan `pluto` and OpenIKED `iked` (docs/operations.md, "Libreswan and OpenIKED
# peers").  Idempotent and silent when everything is already there; needs root only
# when something is missing.
#
# Both Debian packages are *unpacked* into folders of their own under $PREFIX instead
# of being installed with dpkg:
#   * `libreswan` conflicts with strongSwan's packages (installing it would remove
#     strongswan-charon, which the other tests need);
#   * `openiked` has no such conflict, but its maintainer scripts start and enable a
#     system-wide iked (UDP 500/4500 in the root namespace); the tests start their
#     own instances in namespaces and need none of that.
# Their dependencies are installed normally (`apt-get satisfy` on the packages' own
# Depends fields).  Besides $PREFIX this script creates only what the unpacked
# daemons need from the system:
#   * the system user `_iked` (iked drops privileges to it; its home is the empty
#     chroot folder shipped in the package), as the package's postinst would;
#   * two empty mount points, /usr/libexec/ipsec (pluto executes addconn by that
#     absolute path) and /etc/iked (iked's certificate process chroots there); the
#     fixtures bind-mount the unpacked files onto them inside a private mount
#     namespace of each daemon, so the host's view never changes.
set -euo pipefail

PREFIX=${IPSECD_LAB_PEERS:-/opt/ipsecd-lab}
PACKAGES=(libreswan openiked)
# Tools the fixtures run besides the daemons: certutil (pluto's NSS database).
TOOLS=(libnss3-tools)
MOUNT_POINTS=(/usr/libexec/ipsec /etc/iked)

say() { printf 'install-lab-peers: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }

# A package is in place when its unpacked tree carries our stamp (the version that was
# unpacked; delete $PREFIX/NAME to take a newer one) and its binary finds all its
# shared libraries.
unpacked_ok() {
    local pkg=$1 dir=$PREFIX/$1 bin
    [ -f "$dir/.ipsecd-lab-version" ] || return 1
    case $pkg in
        libreswan) bin=$dir/usr/libexec/ipsec/pluto ;;
        openiked) bin=$dir/usr/sbin/iked ;;
    esac
    [ -x "$bin" ] || return 1
    ! ldd "$bin" 2>/dev/null | grep -q 'not found'
}

tools_ok() {
    local p
    for p in "${TOOLS[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}

all_ok() {
    local p m
    for p in "${PACKAGES[@]}"; do unpacked_ok "$p" || return 1; done
    tools_ok || return 1
    getent passwd _iked >/dev/null || return 1
    for m in "${MOUNT_POINTS[@]}"; do [ -d "$m" ] || return 1; done
}

if all_ok; then
    exit 0
fi

[ "$(id -u)" = 0 ] || die "Libreswan/OpenIKED for the kernel lab are missing; run as root: $0"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$work" "$log"' EXIT

run() {  # run quietly; on failure show what the command said
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        die "\`$*\` failed"
    fi
}

if [ -z "$(candidate libreswan)" ] || [ "$(candidate libreswan)" = "(none)" ]; then
    run apt-get update -qq
fi
mkdir -p "$PREFIX"
for pkg in "${PACKAGES[@]}"; do
    unpacked_ok "$pkg" && continue
    version=$(candidate "$pkg")
    [ -n "$version" ] && [ "$version" != "(none)" ] || die "apt offers no $pkg package"
    say "unpacking $pkg $version into $PREFIX/$pkg"
    (cd "$work" && run apt-get download -q "$pkg")
    deb=$(ls "$work/${pkg}"_*.deb)
    run apt-get satisfy -y -q --no-install-recommends "$(dpkg-deb -f "$deb" Depends)"
    rm -rf "$PREFIX/$pkg.new"
    mkdir -p "$PREFIX/$pkg.new"
    dpkg-deb -x "$deb" "$PREFIX/$pkg.new"
    echo "$version" >"$PREFIX/$pkg.new/.ipsecd-lab-version"
    rm -rf "$PREFIX/$pkg"
    mv "$PREFIX/$pkg.new" "$PREFIX/$pkg"
    rm -f "$deb"
    unpacked_ok "$pkg" || die "$pkg unpacked into $PREFIX/$pkg but its binaries miss libraries"
done

if ! tools_ok; then
    say "installing ${TOOLS[*]}"
    run apt-get install -y -q --no-install-recommends "${TOOLS[@]}"
fi

if ! getent passwd _iked >/dev/null; then
    say "adding system user _iked (OpenIKED privilege separation)"
    getent group _iked >/dev/null || run addgroup --system --force-badname _iked
    run adduser --system --force-badname --ingroup _iked --no-create-home \
        --home "$PREFIX/openiked/var/lib/openiked/empty" --disabled-password \
        --gecos "OpenIKED IKEv2 daemon (ipsecd kernel lab)" _iked
fi

for m in "${MOUNT_POINTS[@]}"; do
    [ -d "$m" ] || { say "creating mount point $m"; mkdir -p "$m"; }
done

all_ok || die "installation incomplete (see above)"
