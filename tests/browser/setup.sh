#!/usr/bin/env bash
# Installs what the real browser test needs: Debian's Chromium and npm's playwright-core.
# Never downloads a browser build of its own. Skips quietly what is already there.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium not found and cannot install it (need root + apt-get); browser tests will skip" >&2
  fi
fi
if command -v npm >/dev/null 2>&1 && [ -f package.json ] && [ ! -d node_modules/playwright-core ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent || \
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent
fi
