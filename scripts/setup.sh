#!/usr/bin/env bash
# Set-up: a virtual environment in .venv with torch, sam2 and this project (server and test extras, editable).
# Safe to run again (everything already there is kept); `make serve` / `make test` run it only when pyproject.toml or
# this file changed since it last succeeded, which it records in .venv/.sam2-serve-setup.
#
# Order matters: sam2 is a source package whose build imports torch, so torch goes in first and sam2 is built
# without build isolation (otherwise pip fetches a second multi-GB torch into a throwaway build environment).
# Override the torch build with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url ...".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

STAMP=.venv/.sam2-serve-setup

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
rm -f "$STAMP"
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip wheel "setuptools>=77"
# shellcheck disable=SC2086
$PIP install --quiet $TORCH_SPEC
# sam2's optional CUDA extension only speeds up hole filling; skip compiling it for a quick, portable install.
SAM2_BUILD_CUDA=0 $PIP install --quiet --no-build-isolation "sam2==1.1.0"
$PIP install --quiet --no-build-isolation -e ".[server,test]"
# The browser test drives Debian's Chromium (Playwright's own browser download does not work offline).
CHROMIUM=${SAM2_SERVE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "installing chromium for the browser test (apt-get, about 30 s)"
    { $SUDO apt-get update -qq &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
      echo "note: apt-get could not install chromium; tests/integration/test_browser.py needs it" >&2
  else
    echo "note: no Chromium at $CHROMIUM; tests/integration/test_browser.py needs it:" \
         "sudo apt-get install chromium chromium-driver (or set SAM2_SERVE_CHROMIUM to a Chromium binary)"
  fi
fi
touch "$STAMP"
echo "set-up done: .venv is ready"
