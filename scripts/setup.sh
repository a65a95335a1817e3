#!/usr/bin/env bash
# Set up latentgraph on a fresh machine: a virtualenv with the package, the canvas's npm packages,
# and with --test the test extras and Debian's Chromium for the browser tests. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"

# The canvas library comes from npm, pinned by web/package-lock.json; no build step.
if [ -f web/package-lock.json ] && command -v npm >/dev/null; then
  npm ci --prefix web --no-audit --no-fund --loglevel=error
fi

if [ -n "$extras" ]; then
  # Only the test that boots the official ComfyUI frontend against our server uses this (GPL, never a
  # dependency of latentgraph: it is installed into the test environment, not declared by the package).
  .venv/bin/python -m pip install -q --disable-pip-version-check "comfyui-frontend-package==1.58.1"
fi

if [ -n "$extras" ] && [ ! -x /usr/bin/chromium ]; then
  # Browser tests drive Debian's Chromium; Playwright must never download a browser.
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "note: /usr/bin/chromium missing; run 'sudo apt-get install chromium' for the browser tests" >&2
  fi
fi
