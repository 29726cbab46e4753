#!/usr/bin/env bash
# Prepare this machine for fleettrace: distro bcc, kernel headers, tracefs, and .venv.
# Idempotent: a second run installs nothing and prints nothing but warnings.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
quiet=${FLEETTRACE_SETUP_QUIET:-1}
say() { [ "$quiet" = 1 ] || echo "setup: $*"; }
warn() { echo "setup: warning: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (bcc needs it to load programs)" >&2
    exit 1
fi

kernel=$(uname -r)
arch=$(dpkg --print-architecture)
packages=(python3-bpfcc python3-venv bpftool gcc iproute2 redis-server util-linux mount postgresql openssh-server sudo chromium)
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi

# Kernel headers: the exact ones when the distro has them, else the generic ones linked in.
build=/lib/modules/$kernel/build
if [ ! -e "$build/include/linux/kconfig.h" ] && [ ! -e "$build/Makefile" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
    if apt-cache show "linux-headers-$kernel" >/dev/null 2>&1 \
        || { apt_updated=0; apt-get update -qq >/dev/null; apt_updated=1; apt-cache show "linux-headers-$kernel" >/dev/null 2>&1; }; then
        say "installing linux-headers-$kernel"
        apt_install "linux-headers-$kernel"
    else
        generic=linux-headers-$arch
        apt-cache show "$generic" >/dev/null 2>&1 || generic=linux-headers-generic
        dpkg-query -W -f='${Status}' "$generic" 2>/dev/null | grep -q "ok installed" || apt_install "$generic"
        flavoured=$(ls -d /usr/src/linux-headers-*-"$arch" /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -n 1)
        if [ -z "$flavoured" ]; then
            echo "setup: no kernel headers found after installing $generic" >&2
            exit 1
        fi
        common=${flavoured%-"$arch"}
        common=${common%-generic}
        [ -d "$common-common" ] && common=$common-common
        [ -d "$common" ] || common=$flavoured
        mkdir -p "/lib/modules/$kernel"
        ln -sfn "$flavoured" "$build"
        ln -sfn "$common" "/lib/modules/$kernel/source"
        warn "no headers for kernel $kernel in the distro; linked $(basename "$flavoured") instead."
        warn "tracepoint and perf-event programs work; anything reading kernel structs may not (capabilities report headers=approximate)."
    fi
fi

# bcc attaches through tracefs; some minimal systems do not mount it.
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi
if [ ! -e /sys/kernel/debug/tracing ] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
fi
[ -e /sys/kernel/tracing/events ] || warn "tracefs is not mounted at /sys/kernel/tracing; tracepoints will be unavailable"

# The venv comes from the system Python so that the distro's bcc module is importable.
venv=$here/.venv
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv from /usr/bin/python3"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp=$venv/.fleettrace-installed
want=$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing fleettrace into $venv"
    piplog=$(mktemp)
    if ! { "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip \
        && "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[dev,controller]"; } >"$piplog" 2>&1; then
        tail -n 40 "$piplog" >&2
        echo "setup: pip install failed (full log: $piplog)" >&2
        exit 1
    fi
    rm -f "$piplog"
    echo "$want" > "$stamp"
fi
