# Source me: creates (or reuses) the project's virtual environment in .venv and activates it.
# Re-installs only when pyproject.toml changed since the last install.
# PyTorch pins (see README): torch 2.14.1 + torchvision 0.29.1. (The CPU-only torch 2.13.0 wheel
# some machines offer cannot load torchvision, so it is never used.)
set -e
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${JEPA_VENV:-$_root/.venv}"
_py="${PYTHON:-python3}"
if [ ! -x "$_venv/bin/python" ]; then
  echo "[jepa] creating virtual environment in $_venv"
  "$_py" -m venv "$_venv"
fi
_stamp="$_venv/.jepa-installed"
_want="$(sha256sum "$_root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ]; then
  echo "[jepa] installing jepa and its dependencies into $_venv (first time: a few minutes)"
  "$_venv/bin/python" -m pip install -q --upgrade pip
  "$_venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$_venv/bin/python" -m pip install -q -e "$_root[dev]"
  echo "$_want" > "$_stamp"
fi
"$_venv/bin/python" -c "import importlib.metadata as m; m.distribution('jepa-timeseries')" 2>/dev/null || "$_venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --no-index -e "$_root/examples/jepa-timeseries"  # example modality plugin: the contract suite collects it
export PATH="$_venv/bin:$PATH"
export VIRTUAL_ENV="$_venv"
cd "$_root"
set +e
