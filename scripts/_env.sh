# Sourced by scripts/*: cd to the repository and make sure uv is on PATH.
# uv is found on PATH or in ~/.local/bin; otherwise installed from PyPI with
# pip, then with pipx; with neither, one line names the official installer.
# Each script then syncs what it runs (scripts/test: the dev group; scripts/demo:
# the gateway and the examples only). tests/test_scripts.py runs each branch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV_INSTALL_DOCS="https://docs.astral.sh/uv/getting-started/installation/"

_have_uv() { hash -r; command -v uv >/dev/null 2>&1; }

if ! _have_uv; then
  export PATH="$HOME/.local/bin:$PATH"  # where pip --user and pipx put it
fi
if ! _have_uv && "${PYTHON:-python3}" -m pip --version >/dev/null 2>&1; then
  echo "uv not found: installing it with pip (${PYTHON:-python3} -m pip install --user uv)" >&2
  # --break-system-packages: a Debian/Ubuntu Python refuses --user installs without it (PEP 668).
  "${PYTHON:-python3}" -m pip install --quiet --user uv 2>/dev/null \
    || "${PYTHON:-python3}" -m pip install --quiet --user --break-system-packages uv \
    || true
fi
if ! _have_uv && command -v pipx >/dev/null 2>&1; then
  echo "uv not found: installing it with pipx (pipx install uv)" >&2
  pipx install uv >&2 || true  # (no --quiet: older pipx, e.g. Debian 12's, lacks it)
fi
if ! _have_uv; then
  echo "uv is needed and could not be installed with pip or pipx: install it with the official installer, see $UV_INSTALL_DOCS" >&2
  exit 1
fi
