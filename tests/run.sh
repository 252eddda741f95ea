#!/usr/bin/env bash
# snapwarden's test command (the README's; .ci/run calls it). Installs the pinned moto[server] into a
# project-local virtualenv (.venv), then checks formatting and lints and runs every test. Tests that need moto
# find it through SNAPWARDEN_MOTO_SERVER and fail loudly when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
want=$(sed -n 's/^moto\[server\]==//p' tests/requirements.txt)
if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$want')" 2>/dev/null; then
  echo "tests/run.sh: installing moto[server]==$want into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
export SNAPWARDEN_MOTO_SERVER="$PWD/$venv/bin/moto_server"
# Never let the SDK's credential chain wander off to instance metadata during tests.
export AWS_EC2_METADATA_DISABLED=true
bash tests/deploy/check.sh   # deployment kit: installs systemd/prometheus/linters if missing, runs each file's tool
export SNAPWARDEN_PROMETHEUS="$(command -v prometheus)" SNAPWARDEN_PROMTOOL="$(command -v promtool)"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked "$@"
