#!/usr/bin/env bash
# PyTorch's test/test_optim.py, for the installed torch's version, on torch's and adamkit's
# Adam-family classes side by side (CPU). Needs network access to GitHub and PyPI; PyTorch's
# test file is downloaded into a temporary folder, never into this repository.
#   conformance/run.sh [extra pytest arguments]     (from the repository root, venv active)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
version="$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "==> test/test_optim.py of PyTorch v$version into $work"
curl -fsSL "https://raw.githubusercontent.com/pytorch/pytorch/v$version/test/test_optim.py" \
    -o "$work/test_optim.py"
# The legacy suites it re-exports (optim.test_*) live beside it in PyTorch's tree, do not use
# optim_db, and are not shipped in the wheel: drop those imports.
sed -i '/^from optim\.test_/d' "$work/test_optim.py"
cp "$here/conftest.py" "$work/"
echo "==> expecttest (torch's test helpers need it), into $work/site"
"$python" -m pip install --quiet --target "$work/site" expecttest
cd "$work"
PYTHONPATH="$work/site" "$python" -m pytest test_optim.py -p no:cacheprovider -q -k cpu -rf "$@"
