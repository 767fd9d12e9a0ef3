#!/usr/bin/env bash
# Set up (or reuse) .venv and run the test suite. Extra arguments go to pytest
# (e.g. `bash tools/test.sh -m slow` for the slow tests).
set -uo pipefail
source "$(dirname "$0")/env.sh" || exit 1
export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "tools/test.sh: pytest collected no tests; failing on purpose" >&2
  exit 1
fi
exit $rc
