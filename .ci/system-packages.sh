#!/usr/bin/env bash
# System packages the test suite needs, from Debian's archive (idempotent, quiet):
#   postgresql                  a real server for the PostgreSQL study test (started by the test itself)
#   chromium, chromium-driver   headless browser for the optuna-dashboard test (driven by Selenium)
#   iproute2, util-linux        `ip link set lo up` and `unshare` for the loopback-only test namespace
# Run as root (CI is); .ci/run calls it before the pip install. Without these packages the tests
# that need them skip and say why.
set -euo pipefail

packages=(postgresql chromium chromium-driver iproute2 util-linux fonts-liberation)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  echo ".ci/system-packages.sh: all present (${packages[*]})"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo ".ci/system-packages.sh: missing ${missing[*]}; run as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
echo ".ci/system-packages.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's postgresql package creates and starts a default cluster; the tests start their own server
# on a free port, so the default one is not needed (stop it only if this script just installed it).
if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null; then
  pg_lsclusters --no-header 2>/dev/null | while read -r version name _; do
    pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
  done
fi
