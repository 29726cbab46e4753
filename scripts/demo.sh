#!/usr/bin/env bash
# The first command: set this machine up, start a local fleet (Redis, the controller, hosts in
# namespaces with their own workloads), trace every host and print the results side by side.
# Everything started is stopped at the end; pass --keep to leave the stack running.
set -euo pipefail
cd "$(dirname "$0")/.."
# `su` without `-` keeps a user's PATH, which often lacks the sbin directories.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [ "$(id -u)" != 0 ]; then
    echo "demo: must run as root (namespaces, cgroups and bcc need it): as root \`bash $0\`, or \`sudo bash $0\`" >&2
    exit 1
fi
FLEETTRACE_SETUP_QUIET=${FLEETTRACE_SETUP_QUIET:-0} bash scripts/setup.sh
exec .venv/bin/fleettrace dev demo "$@"
