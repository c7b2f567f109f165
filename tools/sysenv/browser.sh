#!/usr/bin/env bash
# Install the headless browser the web-page system test drives: Debian's `chromium`.
#
# Why only chromium: the test speaks the Chrome DevTools Protocol to it directly over
# --remote-debugging-port with trio-websocket (already a Prism dependency), so neither
# chromium-driver nor selenium is needed. Fonts come with chromium's dependencies, so the
# screenshot the test saves is readable.
#
# Idempotent: installs only what is missing and checks that the browser starts. Names match
# tests/system/test_web_page.py (/usr/bin/chromium).
set -euo pipefail

say() { printf 'browser: %s\n' "$*"; }
die() {
    printf 'browser: %s\n' "$*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages)"

need=()
for pkg in chromium fonts-dejavu-core; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/dev/null
else
    say "chromium already installed"
fi

[ -x /usr/bin/chromium ] || die "/usr/bin/chromium is missing after installing chromium"
say "$(/usr/bin/chromium --version 2>/dev/null || echo 'chromium (version unknown)')"
