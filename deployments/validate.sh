#!/usr/bin/env bash
# Offline checks of everything in deployments/ (run by `make deploy-check`):
#   1. kustomize build of base and every overlay, validated by
#      kubeconform -strict against schemas generated here from the
#      Kubernetes OpenAPI document and the KEDA and prometheus-operator CRDs
#      (Go modules); no resource may lack a schema;
#   2. negative checks: a Deployment with a misspelt field and mutated
#      copies of the rendered manifests must be REJECTED;
#   3. the alert rules: promtool check rules + promtool unit tests;
#   4. the Dockerfile: dockerfilelint (and a known-bad Dockerfile must
#      fail it), plus the Dockerfile's static go build.
# Tools install themselves into bin/ (gitignored) on first use.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEPLOY=$ROOT/deployments
BIN=$ROOT/bin
KUSTOMIZE_VERSION=v5.8.2
KUBECONFORM_VERSION=v0.8.0
DOCKERFILELINT_VERSION=1.8.0
K8S_VERSION=v1.34.4      # schemas of the oldest Kubernetes we support
KEDA_VERSION=v2.21.0
PROM_OPERATOR_VERSION=v0.85.0
SCHEMAS=$BIN/schemas/k8s-$K8S_VERSION-keda-$KEDA_VERSION-promop-$PROM_OPERATOR_VERSION
SCHEMA_LOCATION="$SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json"

export GOFLAGS="${GOFLAGS:-}"
mkdir -p "$BIN"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

step "tools"
# a stamp per version: `kubeconform -v` says "development" when go-installed
if [ ! -f "$BIN/.kustomize-$KUSTOMIZE_VERSION" ] || [ ! -x "$BIN/kustomize" ]; then
	GOBIN=$BIN go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
	touch "$BIN/.kustomize-$KUSTOMIZE_VERSION"
fi
if [ ! -f "$BIN/.kubeconform-$KUBECONFORM_VERSION" ] || [ ! -x "$BIN/kubeconform" ]; then
	GOBIN=$BIN go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
	touch "$BIN/.kubeconform-$KUBECONFORM_VERSION"
fi
DOCKERFILELINT=$BIN/npm/node_modules/.bin/dockerfilelint
if [ ! -x "$DOCKERFILELINT" ]; then
	npm install --silent --no-audit --no-fund --prefix "$BIN/npm" "dockerfilelint@$DOCKERFILELINT_VERSION" >/dev/null
fi
# promtool ships in Debian's prometheus package: unpack it, install nothing.
PROMTOOL=$BIN/promtool/usr/bin/promtool
if [ ! -x "$PROMTOOL" ]; then
	(cd "$WORK" && { apt-get download prometheus >/dev/null 2>&1 ||
		{ apt-get update >/dev/null && apt-get download prometheus >/dev/null; }; })
	dpkg-deb -x "$WORK"/prometheus_*.deb "$BIN/promtool"
fi
echo "kustomize $("$BIN/kustomize" version), kubeconform $KUBECONFORM_VERSION," \
	"dockerfilelint $DOCKERFILELINT_VERSION, $("$PROMTOOL" --version | head -1)"

step "schemas ($SCHEMAS)"
if [ ! -f "$SCHEMAS/.complete" ]; then
	moddir() { # module@version -> its extracted source directory
		(cd "$WORK" && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
	}
	k8s=$(moddir "k8s.io/kubernetes@$K8S_VERSION")
	keda=$(moddir "github.com/kedacore/keda/v2@$KEDA_VERSION")
	promop=$(moddir "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION")
	[ -n "$k8s" ] && [ -n "$keda" ] && [ -n "$promop" ] || fail "could not download the schema source modules"
	(cd "$DEPLOY/schemagen" && go build -o "$BIN/schemagen" .)
	rm -rf "$SCHEMAS.tmp"
	"$BIN/schemagen" -out "$SCHEMAS.tmp" \
		-swagger "$k8s/api/openapi-spec/swagger.json" \
		"$keda"/config/crd/bases/keda.sh_*.yaml \
		"$promop"/example/prometheus-operator-crd/monitoring.coreos.com_{prometheusrules,podmonitors,servicemonitors}.yaml
	touch "$SCHEMAS.tmp/.complete"
	rm -rf "$SCHEMAS" && mv "$SCHEMAS.tmp" "$SCHEMAS"
fi
echo "$(find "$SCHEMAS" -name '*.json' | wc -l) schemas cached"

kubeconform() {
	"$BIN/kubeconform" -strict -summary -kubernetes-version "${K8S_VERSION#v}" \
		-schema-location "$SCHEMA_LOCATION" "$@"
}

step "kustomize build + kubeconform -strict"
for dir in base overlays/dev overlays/production; do
	out=$WORK/$(echo "$dir" | tr / -).yaml
	"$BIN/kustomize" build "$DEPLOY/$dir" >"$out" || fail "kustomize build $dir"
	printf '%-22s ' "$dir:"
	kubeconform "$out" || fail "$dir does not validate"
	grep -q 'Skipped: 0' <(kubeconform "$out") || fail "$dir: a resource was skipped"
done

step "negative checks: these must be rejected"
must_reject() { # name file
	if out=$(kubeconform "$2" 2>&1); then
		printf '%s\n' "$out"
		fail "kubeconform ACCEPTED $1"
	fi
	printf 'rejected as expected: %s\n' "$1"
}
must_reject "testdata/broken-deployment.yaml (terminationGracePeriod)" "$DEPLOY/testdata/broken-deployment.yaml"
prod=$WORK/overlays-production.yaml
mutate() { # name sed-expression
	sed "$2" "$prod" >"$WORK/mutated.yaml"
	cmp -s "$prod" "$WORK/mutated.yaml" && fail "mutation '$1' changed nothing"
	must_reject "$1" "$WORK/mutated.yaml"
}
mutate "Deployment: terminationGracePeriodSeconds misspelt" 's/terminationGracePeriodSeconds:/terminationGracePeriod:/'
mutate "Deployment: readinessProbe.httpGet.path misspelt" '0,/path: \/readyz/s//pat: \/readyz/'
mutate "PodDisruptionBudget: unknown policy value type" 's/maxUnavailable: 1$/maxUnavailable: [1]/'
mutate "ScaledObject: maxReplicaCount misspelt" 's/maxReplicaCount:/maxReplicas:/'
mutate "ScaledObject: lagThreshold as a number" 's/lagThreshold: "500"/lagThreshold: 500/'
mutate "PrometheusRule: alert 'for' misspelt" '0,/for: 5m/s//fore: 5m/'
mutate "ConfigMap: metadata field misspelt" '0,/^  name: tmc-runner-config/s//  nam: tmc-runner-config/'

step "alert rules: promtool check + unit tests"
awk 'f { sub(/^  /, ""); print } /^spec:/ { f = 1 }' "$DEPLOY/base/prometheusrule.yaml" >"$WORK/tmc-runner.rules.yaml"
cp "$DEPLOY/alerts/tmc-runner.test.yaml" "$WORK/"
"$PROMTOOL" check rules "$WORK/tmc-runner.rules.yaml"
(cd "$WORK" && "$PROMTOOL" test rules tmc-runner.test.yaml)

step "Dockerfile"
"$DOCKERFILELINT" "$DEPLOY/Dockerfile"
if "$DOCKERFILELINT" "$DEPLOY/testdata/bad.Dockerfile" >/dev/null 2>&1; then
	fail "dockerfilelint ACCEPTED testdata/bad.Dockerfile"
fi
echo "rejected as expected: testdata/bad.Dockerfile"
# The image's build step, as the Dockerfile runs it: a static binary.
(cd "$ROOT" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$WORK/tmc-runner" ./cmd/tmc-runner)
go version -m "$WORK/tmc-runner" | grep -q 'CGO_ENABLED=0' || fail "binary is not built with CGO_ENABLED=0"
echo "static build of ./cmd/tmc-runner: ok"

printf '\ndeployments: all checks passed in %ds\n' "$((SECONDS - start))"
