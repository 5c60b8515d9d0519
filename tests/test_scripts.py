"""scripts/: set-up that works anywhere (issue 14).

``scripts/_env.sh`` finds uv, or installs it with pip, then with pipx; with
neither it stops with one line naming the official installer. Each branch runs
for real in bash, with a PATH of stand-ins (a ``python3`` whose pip works or
not, a ``pipx``) so nothing is installed. The demo syncs only what it runs and
its banner names the docs and dashboard URLs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
INSTALLER = "https://docs.astral.sh/uv/getting-started/installation/"


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


def _fake_uv(log: Path) -> str:
    return f'echo "uv $*" >> {log}'


def run_env(tmp_path: Path, *, uv: str = "", pip: bool = False, pipx: bool = False,
            local_uv: bool = False) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Source _env.sh in bash with only stand-ins on PATH; return the result and what the stand-ins were asked."""
    bin_dir, home, log = tmp_path / "bin", tmp_path / "home", tmp_path / "calls.log"
    bin_dir.mkdir()
    (home / ".local" / "bin").mkdir(parents=True)
    log.touch()
    local_bin = home / ".local" / "bin"
    for tool in ("dirname",):  # the one external command _env.sh needs besides the ones under test
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    if uv == "path":
        _stub(bin_dir / "uv", _fake_uv(log))
    if local_uv:
        _stub(local_bin / "uv", _fake_uv(log))
    # python3: `-m pip --version` answers only when pip is "installed"; `-m pip install ... uv` puts a uv
    # into ~/.local/bin as pip --user would.
    _stub(bin_dir / "python3", f'''echo "python3 $*" >> {log}
if [ "$1 $2" = "-m pip" ]; then
  {"" if pip else "echo 'No module named pip' >&2; exit 1"}
  if [ "$3" = install ]; then printf '#!{BASH}\\n{_fake_uv(log)}\\n' > {local_bin}/uv; /bin/chmod +x {local_bin}/uv; fi
  exit 0
fi
exit 0''')
    if pipx:
        _stub(bin_dir / "pipx", f'''echo "pipx $*" >> {log}
printf '#!{BASH}\\n{_fake_uv(log)}\\n' > {local_bin}/uv; /bin/chmod +x {local_bin}/uv''')
    script = f'source {ROOT / "scripts" / "_env.sh"}; echo "uv=$(command -v uv)"; echo "pwd=$PWD"'
    done = subprocess.run([BASH, "-c", script], env={"PATH": str(bin_dir), "HOME": str(home)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, check=False)
    return done, log.read_text().splitlines()


def test_env_uses_the_uv_on_path(tmp_path):
    done, calls = run_env(tmp_path, uv="path", pip=True, pipx=True)
    assert done.returncode == 0, done.stderr
    assert f"uv={tmp_path / 'bin' / 'uv'}" in done.stdout and f"pwd={ROOT}" in done.stdout
    assert calls == [] and done.stderr == "", "nothing installed, nothing synced by _env.sh itself"


def test_env_finds_uv_in_local_bin(tmp_path):
    done, calls = run_env(tmp_path, local_uv=True, pip=True)
    assert done.returncode == 0, done.stderr
    assert f"uv={tmp_path / 'home' / '.local' / 'bin' / 'uv'}" in done.stdout
    assert calls == []


def test_env_installs_uv_with_pip(tmp_path):
    done, calls = run_env(tmp_path, pip=True, pipx=True)
    assert done.returncode == 0, done.stderr
    assert f"uv={tmp_path / 'home' / '.local' / 'bin' / 'uv'}" in done.stdout
    assert any(c.startswith("python3 -m pip install") and c.endswith(" uv") and "--user" in c for c in calls), calls
    assert not any(c.startswith("pipx") for c in calls), "pip worked: pipx is not asked"
    assert not any(c.startswith("uv ") for c in calls), "each script syncs what it runs, not _env.sh"


def test_env_installs_uv_with_pipx_when_there_is_no_pip(tmp_path):
    """A stock Debian or Ubuntu has no pip: `python3 -m pip` fails."""
    done, calls = run_env(tmp_path, pip=False, pipx=True)
    assert done.returncode == 0, done.stderr
    assert f"uv={tmp_path / 'home' / '.local' / 'bin' / 'uv'}" in done.stdout
    assert "pipx install uv" in calls, calls
    assert not any("pip install" in c and c.startswith("python3") for c in calls)


def test_env_without_pip_or_pipx_names_the_official_installer(tmp_path):
    done, _calls = run_env(tmp_path, pip=False, pipx=False)
    assert done.returncode == 1 and "uv=" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and INSTALLER in lines[0], done.stderr


UV_CALL = re.compile(r"(?<![\w`-])uv (sync|run)\b([^\n&|;<>]*)")


@pytest.mark.parametrize("script", ["demo", "test"])
def test_scripts_sync_what_they_run(script):
    """The demo installs the gateway and the examples group only (not pytest & co.) and runs
    without syncing again; the test script syncs the default (dev) group and runs the linters and pytest."""
    text = (ROOT / "scripts" / script).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    calls = [(verb, args.split()) for verb, args in UV_CALL.findall(code)]
    syncs = [args for verb, args in calls if verb == "sync"]
    runs = [args for verb, args in calls if verb == "run"]
    assert len(syncs) == 1 and runs and all("--no-sync" in args and "--frozen" in args for args in runs), calls
    assert "--frozen" in syncs[0]
    if script == "demo":
        assert {"--no-dev", "--group", "examples"} <= set(syncs[0]) and "--all-groups" not in syncs[0]
        assert [args[args.index("--no-sync") + 1] for args in runs] == ["uvicorn", "uvicorn", "gateway"]
    else:
        # the linters first, then pytest with the caller's arguments
        assert [args[args.index("--no-sync") + 1] for args in runs] == ["ruff", "mypy", "pytest"]
        assert "--no-dev" not in syncs[0] and runs[-1][-2:] == ["pytest", '"$@"']


def test_demo_banner_names_the_docs_and_the_dashboard():
    banner = (ROOT / "scripts" / "demo").read_text().split("cat <<EOF", 1)[1].split("\nEOF", 1)[0]
    assert "http://$G/api/gateway/docs" in banner and "http://$G/api/gateway/ " in banner


def test_quick_start_names_the_docs_and_the_dashboard():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "localhost:8080/api/gateway/docs>" in quick and "localhost:8080/api/gateway/>" in quick
