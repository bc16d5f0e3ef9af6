#!/usr/bin/env bash
# Debian's chromium for the report test (the browser playwright drives; it downloads none itself).
# Prints the browser's path. Installs the package when missing and this user may (root, or sudo
# without a password); otherwise says what to install and fails.
set -euo pipefail
for candidate in "${LINKAGE_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; exit 0; fi
done
if [ "$(id -u)" = 0 ]; then
  apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
elif sudo -n true 2>/dev/null; then
  sudo apt-get install -y -q chromium >&2
else
  echo "chromium: not installed; run: sudo apt-get install chromium (or set LINKAGE_CHROMIUM)" >&2
  exit 1
fi
echo /usr/bin/chromium
