#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/frontend) when it is missing; does nothing when present.
# Playwright drives this system browser (executable_path=/usr/bin/chromium): nothing ever downloads a browser.
# Needs root (or passwordless sudo) only when Chromium is missing. Measured on Debian 12: about 70 s, 130 packages.
set -euo pipefail
CHROMIUM="${SAFECFG_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_browser.sh: $CHROMIUM is missing and installing Debian's chromium needs root:" \
         "run 'apt-get install -y chromium' as root (or set SAFECFG_CHROMIUM to a Chromium binary)." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get here; install Chromium with this system's package manager" \
         "and set SAFECFG_CHROMIUM to its binary." >&2
    exit 1
fi
echo "install_browser.sh: installing Debian's chromium (about a minute)..." >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" apt-get install -y -qq chromium >/dev/null
"$CHROMIUM" --version >&2
