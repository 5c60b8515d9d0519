# Sourced by scripts/*: find or install uv, then sync the project's one .venv.
# uv comes from PyPI (pip), so a machine with only Python 3.11+ can bootstrap it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v uv >/dev/null 2>&1; then
  export PATH="$HOME/.local/bin:$PATH"
fi
if ! command -v uv >/dev/null 2>&1; then
  echo "uv not found: installing it with pip (python3 -m pip install --user uv)" >&2
  python3 -m pip install --quiet --user uv 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages uv
  hash -r
fi
uv sync --frozen --quiet
