#!/usr/bin/env bash
# Type-check fedge with mypy, as installed: `fedge.protocol`, `fedge.agent`, ... (not the folders).
#
# Usage: scripts/typecheck.sh [mypy args]      (default: -p fedge, every part)
# Settings: [tool.mypy] in pyproject.toml (strict on fedge.protocol).
#
# Why a script: the source folders (protocol/, agent/, ...) become fedge.protocol, fedge.agent,
# ... through setuptools' package-dir mapping, and the editable install resolves that with an
# import hook, which mypy cannot follow (it reads files, it does not import). Pointing mypy at
# the folders would name the modules `protocol.*` and break every `fedge.protocol` import.
# So this builds .mypy-src/fedge/ from symlinks that mirror the mapping in pyproject.toml and
# runs mypy with MYPYPATH=.mypy-src from that folder (so the checkout's own fedge/ folder, which
# lacks the mapped parts, cannot shadow it). Error paths are printed relative to the repo root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
TREE="$ROOT/.mypy-src"

"$PY" - "$ROOT" "$TREE" <<'PYEOF'
import os, shutil, sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

root, tree = Path(sys.argv[1]), Path(sys.argv[2])
mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
pkg = tree / "fedge"
shutil.rmtree(pkg, ignore_errors=True)  # rebuilt every time: new files appear
pkg.mkdir(parents=True)
# fedge/ itself: link its entries one by one (the mapped parts are added beside them)
for entry in (root / mapping["fedge"]).iterdir():
    if entry.name != "__pycache__":
        os.symlink(entry, pkg / entry.name)
rewrites = []  # error paths: .mypy-src's fedge/protocol/x.py -> the checkout's protocol/x.py
for name, folder in mapping.items():
    if name != "fedge":
        os.symlink(root / folder, tree / Path(*name.split(".")))
        rewrites.append(f"s#^{'/'.join(name.split('.'))}/#{folder}/#")
(tree / ".paths.sed").write_text("\n".join(rewrites) + "\n")
PYEOF

if [ "$#" -eq 0 ]; then
    set -- -p fedge
fi
cd "$TREE"
set +e
MYPYPATH="$TREE" "$PY" -m mypy --config-file "$ROOT/pyproject.toml" \
    --cache-dir "$ROOT/.mypy_cache" "$@" >"$TREE/.out" 2>&1
rc=$?
set -e
sed -f "$TREE/.paths.sed" "$TREE/.out"
exit "$rc"
