#!/usr/bin/env bash
# The agent on the newest plain `onnxruntime` wheel: no training wheel, no torch.
#
# 1. The main venv (.venv: torch, onnxruntime-training 1.19.2) exports the test bundles and
#    records what ort-portable reaches on them (tests/support/portable_fixtures.py).
# 2. A second venv (.venv-ort-current, reused between runs) gets fedge's core and `agent`
#    dependencies read from pyproject.toml with every onnxruntime requirement replaced by plain
#    `onnxruntime` (newest release: --upgrade), and fedge itself with --no-deps. pip never sees
#    the agent extra's markers, so the training wheel is never considered.
# 3. It runs the tests marked `portable_runtime` and the agent unit tests that need no torch.
#
# Usage: scripts/test-current-ort.sh            (from the repository root or anywhere)
#   MAIN_PY=...                  python of the venv that can export (default .venv/bin/python)
#   ORT_CURRENT_VENV=...         the second venv (default .venv-ort-current)
#   FEDGE_PORTABLE_FIXTURES=dir  reuse fixtures already built there
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
MAIN_PY=${MAIN_PY:-.venv/bin/python}
VENV=${ORT_CURRENT_VENV:-.venv-ort-current}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "${FEDGE_PORTABLE_FIXTURES:-}" ]; then
    FEDGE_PORTABLE_FIXTURES="$work/fixtures"
    PYTHONPATH=tests "$MAIN_PY" -m support.portable_fixtures "$FEDGE_PORTABLE_FIXTURES" >/dev/null
fi
export FEDGE_PORTABLE_FIXTURES
echo "fixtures built by onnxruntime $(sed -n 's/.*"onnxruntime": "\(.*\)".*/\1/p' \
    "$FEDGE_PORTABLE_FIXTURES/index.json") in $(($(date +%s) - started)) s"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" - >"$work/requirements.txt" <<'EOF'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in [*project["dependencies"], *project["optional-dependencies"]["agent"]]:
    name = re.split(r"[\s;<>=!~\[]", req, maxsplit=1)[0].lower()
    if not name.startswith("onnxruntime"):
        print(req)
print("onnxruntime")
print("pytest>=8")
print("pytest-timeout>=2.2")
EOF
pip_quiet() {  # pip's output only when it fails
    "$VENV/bin/pip" "$@" >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
}
pip_quiet install -q --upgrade -r "$work/requirements.txt"
pip_quiet install -q --no-deps -e .
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import importlib.util

names = {d.metadata["Name"].lower() for d in md.distributions()}
bad = sorted(n for n in names if n.startswith(("torch", "onnxruntime-training")) or n == "onnx")
if bad:
    raise SystemExit(f"the current-ORT venv must not hold {bad}")
print("onnxruntime", md.version("onnxruntime"), "- no torch, no training wheel")
EOF
echo "venv ready in $(($(date +%s) - started)) s"

"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "portable_runtime or not integration" \
    tests/integration/test_portable_runtime.py \
    tests/unit/test_agent_rounds.py tests/unit/test_agent_state.py \
    tests/unit/test_agent_pacing.py tests/unit/test_eligibility.py \
    tests/unit/test_tensors.py tests/unit/test_signing.py
echo "test-current-ort: done in $(($(date +%s) - started)) s"
