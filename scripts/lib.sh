# Shared helpers for scripts/up and scripts/test. Sourced, not run.

# Installs the Debian packages given that are missing (root only; apt-get update once).
ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
        return 1
    fi
    echo "==> installing ${missing[*]}"
    if [ -z "${STRATO_APT_UPDATED:-}" ]; then
        apt-get update -qq
        export STRATO_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts (and enables at boot) the server packages it installs; Strato runs
    # its own instances of them, so the packaged ones are stopped and disabled.
    for svc in postgresql mariadb redis-server nats-server nginx; do
        if command -v service >/dev/null && [ -e "/etc/init.d/$svc" ]; then
            service "$svc" stop >/dev/null 2>&1 || true
            if command -v systemctl >/dev/null; then
                systemctl disable "$svc" >/dev/null 2>&1 || true
            fi
        fi
    done
}

# Packages every Strato node needs at run time.
RUNTIME_PACKAGES=(runc tini iproute2 nftables python3 python3-venv git zip ca-certificates curl
    postgresql mariadb-server redis-server e2fsprogs mount)

# Node.js for the node buildpack, unless the host already has it.
node_packages() {
    if [ ! -x /usr/bin/node ] || [ ! -x /usr/bin/npm ]; then
        echo nodejs npm
    fi
}
