#!/usr/bin/env bash
# Prepare this machine for fleettrace: distro packages, kernel headers, tracefs and .venv.
# Idempotent: a second run installs nothing and prints nothing. Any failure prints one line
# naming the step and what to do; it never exits silently.
#
#   bash scripts/setup.sh                  what the demo needs
#   bash scripts/setup.sh --for tests      that, plus what the tests need (PostgreSQL, sshd, sudo, Chromium)
#   bash scripts/setup.sh --only headers   only the kernel-headers step
#
# Environment:
#   FLEETTRACE_KERNEL_HEADERS=DIR  use DIR (a kernel build tree) as the running kernel's headers
#   FLEETTRACE_SETUP_QUIET=0       say what is being done (default 1: only warnings and errors)
#   FLEETTRACE_SETUP_OFFLINE=1     never call apt: a missing package is an error (used by tests)
#   FLEETTRACE_SETUP_KERNEL=REL    act for kernel release REL instead of `uname -r` (used by tests)
set -Eeuo pipefail
shopt -s nullglob

here=$(cd "$(dirname "$0")/.." && pwd)
quiet=${FLEETTRACE_SETUP_QUIET:-1}
offline=${FLEETTRACE_SETUP_OFFLINE:-0}
step="arguments"

say() { [ "$quiet" = 1 ] || echo "setup: $*"; }
warn() { echo "setup: warning: $*" >&2; }
die() {
    echo "setup: $step: $*" >&2
    exit 1
}
# Anything not handled below still names its step (once: not again from each subshell).
trap 'rc=$?; [ "$BASH_SUBSHELL" = 0 ] && echo "setup: $step: \`$BASH_COMMAND\` failed with status $rc (scripts/setup.sh line $LINENO); rerun with FLEETTRACE_SETUP_QUIET=0 for details" >&2' ERR

purpose=demo
only=
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --for) purpose=${2:?--for needs demo or tests}; shift 2 ;;
        --only) only=${2:?--only needs headers}; shift 2 ;;
        -*) die "unknown option $1 (see the top of scripts/setup.sh)" ;;
        *) extra+=("$1"); shift ;;
    esac
done
case $purpose in demo | tests) ;; *) die "--for takes demo or tests, not $purpose" ;; esac
case $only in "" | headers) ;; *) die "--only takes headers, not $only" ;; esac

step="checking the user"
if [ "$(id -u)" != 0 ]; then
    die "must run as root (bcc, namespaces and cgroups need it): as root \`bash $0\`, or \`sudo bash $0\`"
fi
# `su` without `-` keeps a user's PATH, which often lacks the sbin directories.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

kernel=${FLEETTRACE_SETUP_KERNEL:-$(uname -r)}
command -v dpkg >/dev/null || die "this script knows Debian and Ubuntu (dpkg and apt); install by hand what README.md lists"
arch=$(dpkg --print-architecture)
os_id=$(. /etc/os-release 2>/dev/null && echo "${ID:-}")
os_codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")

# -- packages -------------------------------------------------------------------------------

# "a|b" means the first of them that the distro has (Debian and Ubuntu name some differently).
# bpftrace: the bpftrace program's engine (Debian 12 ships 0.17, Ubuntu 22.04 0.14, universe).
# gcc with libc6-dev: the C workloads of the tests and bench/ (gcc only recommends libc6-dev,
# and --no-install-recommends leaves it out: no stdio.h on a fresh machine).
packages=(python3-bpfcc bpftrace python3-venv "bpftool|linux-tools-common" gcc libc6-dev iproute2 redis-server util-linux mount)
# VM hosts (`fleettrace dev up --kernel 6.1`): QEMU, and what virtme-ng runs (depmod, busybox,
# and `file`, which it asks whether busybox is static).
packages+=(qemu-system-x86 kmod busybox-static file)
[ "$purpose" = tests ] && packages+=(postgresql openssh-server sudo "chromium|chromium-browser" "chromium-driver|chromium-chromedriver")
packages+=("${extra[@]}")

# Not `cmd | grep -q`: under pipefail, grep -q exiting at the first match can kill the writer
# with SIGPIPE (status 141) and make the whole test fail at random.
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == *"ok installed"* ]]; }
known() { [[ $(apt-cache policy "$1" 2>/dev/null) =~ Candidate:\ [^\(] ]]; }

apt_updated=0
apt_refresh() {
    [ "$apt_updated" = 1 ] && return 0
    [ "$offline" = 1 ] && return 0
    say "apt-get update"
    local log
    log=$(mktemp)
    if ! apt-get update -qq >"$log" 2>&1; then
        tail -n 5 "$log" >&2
        die "apt-get update failed: check the network and /etc/apt/sources.list, then rerun"
    fi
    rm -f "$log"
    apt_updated=1
}

# A package apt can install: known to the current lists, or after refreshing them once.
available() {
    known "$1" && return 0
    [ "$offline" = 1 ] && return 1
    apt_refresh
    known "$1"
}

apt_install() {
    [ "$offline" = 1 ] && die "would install $* but FLEETTRACE_SETUP_OFFLINE=1: install it first"
    say "installing $*"
    local log
    log=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1; then
        tail -n 10 "$log" >&2
        die "apt-get install $* failed (last lines above; full log $log): fix apt, then rerun"
    fi
    rm -f "$log"
}

install_packages() {
    step="installing packages"
    local entry choice missing=() want=()
    for entry in "${packages[@]}"; do
        local -a alternatives
        IFS='|' read -r -a alternatives <<<"$entry"
        local have=0
        for choice in "${alternatives[@]}"; do installed "$choice" && have=1 && break; done
        [ "$have" = 1 ] || missing+=("$entry")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    [ "$offline" = 1 ] && die "missing ${missing[*]} and FLEETTRACE_SETUP_OFFLINE=1: install them first"
    apt_refresh
    for entry in "${missing[@]}"; do
        local -a alternatives
        IFS='|' read -r -a alternatives <<<"$entry"
        local found=
        for choice in "${alternatives[@]}"; do
            if known "$choice"; then found=$choice && break; fi
        done
        [ -n "$found" ] || die "the distro's package lists have no ${entry//|/ or }: enable its main repository, or install it by hand"
        want+=("$found")
    done
    apt_install "${want[@]}"
}

# -- kernel headers ---------------------------------------------------------------------------

modules=/lib/modules/$kernel

# A build tree bcc can compile against.
headers_ok() { [ -e "$1/Makefile" ] || [ -e "$1/include/linux/kconfig.h" ]; }

# The architecture-independent half of a split headers package (Debian's -common, Ubuntu's
# unflavoured directory), else the tree itself.
source_of() {
    local tree=$1 prefix=$1
    while [[ $prefix == */linux-headers-*-* ]]; do
        prefix=${prefix%-*}
        if [ -d "$prefix-common" ]; then echo "$prefix-common" && return; fi
        if [ -d "$prefix" ]; then echo "$prefix" && return; fi
    done
    echo "$tree"
}

link_headers() {
    local tree=$1 source
    source=$(source_of "$tree")
    if [ -d "$modules/build" ] && [ ! -L "$modules/build" ]; then
        die "$modules/build is a directory without kernel headers: remove it, or set FLEETTRACE_KERNEL_HEADERS=DIR"
    fi
    mkdir -p "$modules" || die "cannot create $modules (read-only /lib?): set FLEETTRACE_KERNEL_HEADERS=DIR on a writable system"
    [ "$(readlink "$modules/build" || true)" = "$tree" ] || ln -sfn "$tree" "$modules/build"
    if [ ! -e "$modules/source" ] || [ -L "$modules/source" ]; then
        [ "$(readlink "$modules/source" || true)" = "$source" ] || ln -sfn "$source" "$modules/source"
    fi
}

# The newest distro "generic" headers: Debian's linux-headers-X-N-<arch>, Ubuntu's -generic.
newest_generic() {
    local dir name found=()
    for dir in /usr/src/linux-headers-*; do
        name=${dir##*/}
        [[ $name =~ ^linux-headers-[0-9][0-9.]*-[0-9]+-($arch|generic)$ ]] || continue
        headers_ok "$dir" && found+=("$dir")
    done
    [ ${#found[@]} -gt 0 ] || return 0
    printf '%s\n' "${found[@]}" | sort -V | tail -n 1
}

setup_headers() {
    step="kernel headers for $kernel"
    if [ -n "${FLEETTRACE_KERNEL_HEADERS:-}" ]; then
        local tree
        tree=$(cd "$FLEETTRACE_KERNEL_HEADERS" 2>/dev/null && pwd -P) \
            || die "FLEETTRACE_KERNEL_HEADERS=$FLEETTRACE_KERNEL_HEADERS is not a directory"
        headers_ok "$tree" \
            || die "FLEETTRACE_KERNEL_HEADERS=$tree holds no kernel headers (no Makefile or include/linux/kconfig.h)"
        link_headers "$tree"
        return 0
    fi
    headers_ok "$modules/build" && return 0
    # The agent extracts the kernel's own headers (kheaders) when there is no build tree.
    [ -e /sys/kernel/kheaders.tar.xz ] && return 0
    if [ -L "$modules/build" ]; then
        warn "$modules/build points to $(readlink "$modules/build"), which holds no headers: relinking"
    fi

    local exact=/usr/src/linux-headers-$kernel
    if ! headers_ok "$exact" && available "linux-headers-$kernel"; then
        apt_install "linux-headers-$kernel"
    fi
    headers_ok "$modules/build" && return 0
    if headers_ok "$exact"; then
        say "linking $exact as the headers of $kernel"
        link_headers "$exact"
        return 0
    fi

    # No exact headers for this kernel: the distro's generic ones, with a warning.
    local generic
    for generic in "linux-headers-$arch" linux-headers-generic; do
        installed "$generic" && break
        if available "$generic"; then
            apt_install "$generic"
            break
        fi
    done
    local tree
    tree=$(newest_generic)
    if [ -z "$tree" ]; then
        die "cannot find kernel headers for $kernel: the distro has no linux-headers-$kernel and no generic headers are under /usr/src; install your kernel's headers, or set FLEETTRACE_KERNEL_HEADERS=DIR (a kernel build tree)"
    fi
    link_headers "$tree"
    warn "no headers for kernel $kernel in the distro; linked ${tree##*/} instead (set FLEETTRACE_KERNEL_HEADERS=DIR to choose)."
    warn "tracepoint and perf-event programs work; anything reading kernel structs may not (capabilities report headers=approximate)."
}

# -- tracefs and the venv ---------------------------------------------------------------------

mount_tracefs() {
    step="mounting tracefs"
    # bcc attaches through tracefs; some minimal systems do not mount it.
    if [ ! -e /sys/kernel/tracing/events ]; then
        mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
    fi
    if [ ! -e /sys/kernel/debug/tracing ] && ! mountpoint -q /sys/kernel/debug; then
        mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
    fi
    [ -e /sys/kernel/tracing/events ] || warn "tracefs is not mounted at /sys/kernel/tracing; tracepoints will be unavailable"
}

make_venv() {
    step="python environment"
    local venv=$here/.venv
    if [ ! -x "$venv/bin/python" ]; then
        say "creating $venv from /usr/bin/python3"
        /usr/bin/python3 -m venv --system-site-packages "$venv" \
            || die "python3 -m venv failed: is python3-venv installed? (apt-get install python3-venv)"
    fi
    "$venv/bin/python" -c "import bcc" 2>/dev/null \
        || die "bcc does not import in $venv: python3-bpfcc must be installed for /usr/bin/python3 (delete $venv and rerun)"
    local stamp=$venv/.fleettrace-installed want
    want=$(cat "$here/pyproject.toml" "$here/agent/pyproject.toml" "$here/tools/pyproject.toml" | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing fleettrace into $venv"
        local log
        log=$(mktemp)
        if ! { "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip \
            && "$venv/bin/pip" install -q --disable-pip-version-check \
                -e "$here/agent" -e "$here[dev]" -e "$here/tools"; } >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            die "pip install failed (last lines above; full log $log): check access to PyPI, then rerun"
        fi
        rm -f "$log"
        echo "$want" >"$stamp"
    fi
}

# promtool alone, for the tests of the controller's /metrics (`promtool check metrics`): taken
# out of Debian's prometheus package, which, installed, would start a Prometheus server.
install_promtool() {
    step="promtool"
    local bin=$here/.venv/bin/promtool
    { [ "$purpose" = tests ] && [ ! -x "$bin" ]; } || return 0
    if command -v promtool >/dev/null; then ln -sf "$(command -v promtool)" "$bin" && return 0; fi
    [ "$offline" = 1 ] && die "no promtool and FLEETTRACE_SETUP_OFFLINE=1: put one at $bin"
    available prometheus || die "the distro's package lists have no prometheus (for promtool): put a promtool at $bin"
    say "fetching promtool from the distro's prometheus package"
    local tmp
    tmp=$(mktemp -d)
    if ! { (cd "$tmp" && apt-get download -q prometheus) \
        && dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool; } >"$tmp/log" 2>&1; then
        tail -n 10 "$tmp/log" >&2
        die "could not take promtool out of the prometheus package (last lines above)"
    fi
    install -m 755 "$tmp/usr/bin/promtool" "$bin"
    rm -rf "$tmp"
}

# The distro kernels the VM tests boot, extracted into the checkout's var/kernels (or
# FLEETTRACE_KERNEL_CACHE): a second run finds them there and downloads nothing.
# The 6.12 kernel is in bookworm-backports, which a default Debian 12 does not list.
enable_backports() {
    local list=/etc/apt/sources.list.d/fleettrace-bookworm-backports.list
    [ "$os_id:$os_codename" = debian:bookworm ] || return 0
    grep -rqs -e bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/ && return 0
    warn "adding bookworm-backports to apt's sources ($list), for the 6.12 kernel"
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$list"
    apt_updated=0
}

fetch_kernels() {
    step="fetching the VM hosts' kernels"
    { [ "$purpose" = tests ] && [ "$offline" != 1 ]; } || return 0
    if [ "$os_id" != debian ]; then
        # Their packages are Debian's: another distro's apt does not have them.
        warn "the VM tests boot Debian's 6.1 and 6.12 kernels, which apt on $os_id cannot fetch: they will not run here"
        return 0
    fi
    local fetch=("$here/.venv/bin/python" -m devstack.kernels fetch 6.1 6.12)
    [ "$quiet" = 1 ] || fetch+=(--verbose)
    # Stale package lists name kernels the mirror dropped: refresh them once and retry.
    "${fetch[@]}" 2>/dev/null && return 0
    enable_backports
    apt_refresh
    "${fetch[@]}" || die "could not fetch the 6.1 and 6.12 kernels (the line above says why)"
}

if [ "$only" = headers ]; then
    setup_headers
    exit 0
fi
install_packages
setup_headers
mount_tracefs
make_venv
install_promtool
fetch_kernels
