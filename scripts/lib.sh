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

# Packages building Strato needs (a C compiler and linker for the crates that build C;
# curl, for rustup, is among the run-time ones).
BUILD_PACKAGES=(gcc libc6-dev)

# Packages every Strato node needs at run time.
RUNTIME_PACKAGES=(runc tini iproute2 nftables python3 python3-venv git zip ca-certificates curl
    postgresql mariadb-server redis-server e2fsprogs mount)

# Node.js for the node buildpack, unless the host already has it.
node_packages() {
    if [ ! -x /usr/bin/node ] || [ ! -x /usr/bin/npm ]; then
        echo nodejs npm
    fi
}

# Whether the rustc on PATH is at least version $1.
rust_at_least() {
    local have
    have="$(rustc --version 2>/dev/null | awk '{print $2}')"
    [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$1" "$have" | sort -V | head -n 1)" = "$1" ]
}

# A Rust toolchain to build with: the one on PATH or in ~/.cargo when it is recent enough
# for Cargo.toml's rust-version (Debian's own packaged cargo is not), else stable from
# rustup (minimal profile), for this user.
ensure_rust() {
    local cargo_home="${CARGO_HOME:-${HOME:-/root}/.cargo}"
    local need
    need="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
    if [ -x "$cargo_home/bin/cargo" ]; then
        export PATH="$cargo_home/bin:$PATH"
    fi
    if command -v cargo >/dev/null && rust_at_least "${need:-1.0}"; then
        return 0
    fi
    echo "==> installing a Rust toolchain (rustup, stable, minimal profile; Strato needs ${need:-a recent one})"
    # rustup-init acts on the name it is run by: keep that name.
    local dir init
    dir="$(mktemp -d)"
    init="$dir/rustup-init"
    if ! curl --proto '=https' --tlsv1.2 -fsSL -o "$init" \
        "https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init"; then
        rm -rf "$dir"
        echo "cannot download rustup-init from static.rust-lang.org (is curl installed?); install a Rust toolchain (https://rustup.rs) and run this again" >&2
        return 1
    fi
    chmod +x "$init"
    if ! RUSTUP_INIT_SKIP_PATH_CHECK=yes "$init" -y -q --profile minimal --default-toolchain stable --no-modify-path >/dev/null; then
        rm -rf "$dir"
        echo "rustup-init failed; install a Rust toolchain (https://rustup.rs) and run this again" >&2
        return 1
    fi
    rm -rf "$dir"
    export PATH="$cargo_home/bin:$PATH"
}
