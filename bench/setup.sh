#!/usr/bin/env bash
# Install what the benchmark needs: wrk (load generator), nginx (reference row), py-spy (profile).
# Debian/Ubuntu; run as root (or with sudo). Python packages go into the project's venv.
set -euo pipefail
PY="${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk nginx-light \
        || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk nginx
fi
# the system nginx service is not used: the benchmark starts its own with a generated config
$SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
"$PY" -m pip install -q py-spy
echo "wrk:    $(command -v wrk)"
echo "nginx:  $(command -v nginx || ls /usr/sbin/nginx)"
echo "py-spy: $("$PY" -c 'import shutil,sys,os; print(os.path.join(os.path.dirname(sys.executable),"py-spy"))')"
