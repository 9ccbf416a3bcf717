#!/usr/bin/env bash
# Set up edged in a virtual environment on a fresh Debian / Raspberry Pi OS machine and
# run it or its tests. Needs only python3 (python3-venv is installed when missing).
#
#   bash deploy/bootstrap.sh run  [edged run options...]   # the embedded demo by default
#   bash deploy/bootstrap.sh test [pytest options...]   # installs the Debian programs the tests
#                                                       # need first (deploy/test-tools.sh)
#
# Environment: EDGED_VENV (default .venv), EDGED_EXTRAS (extra pip extras, e.g. "tflite"
# for the classic Coral runtime with numpy<2), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-}
case "$action" in
  run|test) shift ;;
  *) echo "usage: bash deploy/bootstrap.sh run|test [options...]" >&2; exit 2 ;;
esac

py=${PYTHON:-python3}
venv=${EDGED_VENV:-.venv}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v "$py" >/dev/null; then
  echo "bootstrap: $py not found; install Python 3.11 or newer" >&2; exit 1
fi
if [ ! -x "$venv/bin/python" ] && ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "bootstrap: installing python3-venv (Debian keeps venv support in its own package)" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"

extras=$([ "$action" = test ] && echo "test" || echo "")
if [ -n "${EDGED_EXTRAS:-}" ]; then extras="${extras:+$extras,}$EDGED_EXTRAS"; fi
spec=".${extras:+[$extras]}"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"

if [ "$action" = run ]; then
  exec "$venv/bin/edged" run "$@"
fi
bash deploy/test-tools.sh
exec "$venv/bin/python" -m pytest "$@"
