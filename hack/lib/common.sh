# Shared helpers for hack/ scripts. Source it; do not run it.
# Everything the project installs or builds lives under one cache folder outside
# the clone, keyed by version and inputs, so reruns are fast and a fresh
# machine still works.

set -euo pipefail

VMSCALE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VMSCALE_CACHE="${VMSCALE_CACHE:-$HOME/.cache/vmscale}"
export VMSCALE_ROOT VMSCALE_CACHE
mkdir -p "$VMSCALE_CACHE"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# k8s_version prints the k8s.io/kubernetes version the main go.mod requires.
k8s_version() {
	(cd "$VMSCALE_ROOT" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
}

# with_progress runs a command, printing an elapsed-time line every 30s so
# long builds never look hung.
with_progress() {
	local what="$1"; shift
	local start=$SECONDS
	"$@" &
	local pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
		kill -0 "$pid" 2>/dev/null && log "$what: still working ($((SECONDS - start))s)"
	done
	# Not `wait; log`: called in a condition (if ! with_progress ...) errexit
	# is off, and the log line's status would hide the command's.
	local rc=0
	wait "$pid" || rc=$?
	if [ "$rc" -ne 0 ]; then
		log "$what: failed (exit $rc) after $((SECONDS - start))s"
		return "$rc"
	fi
	log "$what: done in $((SECONDS - start))s"
}

# apt_install installs Debian packages that are missing, once.
apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing Debian packages: ${missing[*]}"
	local sudo=""
	[ "$(id -u)" -ne 0 ] && sudo=sudo
	if [ ! -f "$VMSCALE_CACHE/.apt-updated" ] || [ -n "$(find "$VMSCALE_CACHE/.apt-updated" -mmin +1440)" ]; then
		$sudo apt-get update -qq >&2
		touch "$VMSCALE_CACHE/.apt-updated"
	fi
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
