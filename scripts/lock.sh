#!/usr/bin/env bash
# Refresh constraints.txt, the pinned set every install uses: a fresh Python 3.11 venv, the ranges pyproject.toml
# declares for every extra that installs here, then `pip freeze` of what resolved (transitive packages included).
# Run it when you mean to move a dependency, then run .ci/run (or ../shared/tools/ci-clean-clone) before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet -e ".[full,test,peer,rtx-runtime]"
"$tmp/venv/bin/pip" check
{
  echo "# The tested install: every package pinned, transitive ones included. Used as"
  echo "#   pip install -e \".[full,test]\" -c constraints.txt     (and the base install: pip install -e . -c constraints.txt)"
  echo "# Refresh with scripts/lock.sh (a fresh venv from pyproject.toml's ranges, then pip freeze); never edit by hand."
  echo "# Made $(date -u +%Y-%m-%d) with $("$tmp/venv/bin/python" --version) on $(uname -m)."
  "$tmp/venv/bin/pip" freeze --exclude-editable | sed -e 's/+cpu$//' | LC_ALL=C sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned packages"
