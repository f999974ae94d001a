// A separate module on purpose: this tool needs a YAML parser that the
// service's own go.mod does not require, and `go test ./...` at the root
// skips it. deployments/validate.sh runs it.
module github.com/tmc-runner/tmc-runner/deployments/schemagen

go 1.26.8

require gopkg.in/yaml.v3 v3.0.1
