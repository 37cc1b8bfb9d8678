#!/usr/bin/env bash
# Installs the system packages Parapet needs to build, test and benchmark on Debian:
#   libclang-dev, clang  - pg_query's build (bindgen + the PostgreSQL parser in C)
#   postgresql(-contrib) - initdb/pg_ctl/postgres/pgbench/psql for the tests' throw-away clusters
#   pgbouncer            - the baseline in bench/gateway.sh
#   systemd              - systemd-analyze, to check the packaged unit (tests/package.rs)
#   chromium(-driver)    - the console's web UI tests (tests/console_ui.rs, WebDriver)
# and, with `--tests` (as scripts/test.sh calls it), Garage (an S3-compatible object store; the
# object-storage tests start a single node), built once with `cargo install` into ~/.cargo/bin and
# kept there (a build takes tens of minutes on a small machine; PARAPET_SKIP_GARAGE=1 skips it, the
# tests that need it then say so). Running the gateway needs no Garage.
# Idempotent and quiet when everything is present (no apt-get update then).
set -euo pipefail
with_tests=0
for arg in "$@"; do
    case $arg in
        --tests) with_tests=1 ;;
        *) echo "setup: unknown argument $arg (use --tests to also build what only the tests need)" >&2; exit 2 ;;
    esac
done

packages=(libclang-dev clang postgresql postgresql-contrib postgresql-client pgbouncer systemd chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "setup: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
        SUDO="sudo"
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "setup: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin after install" >&2
    exit 1
fi

# Garage: exactly this version (the S3 tests depend on its CLI's output and behaviour), built
# once; a binary of another version is replaced.
GARAGE_VERSION=2.5.0
garage_bin="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
if [ "$with_tests" = 1 ] && [ "${PARAPET_SKIP_GARAGE:-0}" != 1 ] &&
    ! "$garage_bin" --version 2>/dev/null | grep -qF "$GARAGE_VERSION"; then
    echo "setup: building Garage $GARAGE_VERSION with cargo install (once; this takes a while)" >&2
    cargo install garage --version "$GARAGE_VERSION" --locked --force \
        --no-default-features --features bundled-libs,lmdb >/dev/null
    "$garage_bin" --version >/dev/null
fi
