// Command schemagen writes standalone JSON schemas for kubeconform from
// the Kubernetes OpenAPI v2 document (api/openapi-spec/swagger.json in the
// k8s.io/kubernetes module) and from CustomResourceDefinition YAML files
// (KEDA, prometheus-operator, ...).
//
// Files are named the way kubeconform's default template expects:
// {kind}{-group's first label}{-version}.json, e.g. deployment-apps-v1.json,
// configmap-v1.json, scaledobject-keda-v1alpha1.json.
//
// Every object schema that lists its properties gets
// additionalProperties: false (unless it already says otherwise or carries
// x-kubernetes-preserve-unknown-fields), so kubeconform -strict rejects
// unknown or misspelt fields. int-or-string and Quantity values accept both
// forms, as the API server does.
//
//	schemagen -out DIR [-swagger swagger.json] [crd.yaml ...]
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

const (
	refPrefix  = "#/definitions/"
	objectMeta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
	intOrStr   = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
	quantity   = "io.k8s.apimachinery.pkg.api.resource.Quantity"
)

type obj = map[string]any

func main() {
	out := flag.String("out", "", "directory to write the schemas to")
	swagger := flag.String("swagger", "", "Kubernetes OpenAPI v2 document (swagger.json)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "usage: schemagen -out DIR [-swagger swagger.json] [crd.yaml ...]")
		os.Exit(2)
	}
	if err := run(*out, *swagger, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "schemagen:", err)
		os.Exit(1)
	}
}

func run(out, swagger string, crds []string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	w := &writer{dir: out, seen: map[string]string{}}
	var defs obj
	if swagger != "" {
		raw, err := os.ReadFile(swagger)
		if err != nil {
			return err
		}
		var doc struct {
			Definitions obj `json:"definitions"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			return fmt.Errorf("%s: %w", swagger, err)
		}
		defs = doc.Definitions
		if len(defs) == 0 {
			return fmt.Errorf("%s: no definitions", swagger)
		}
		// Kubernetes' special scalar types, as the API server decodes them.
		defs[intOrStr] = obj{"oneOf": []any{obj{"type": "string"}, obj{"type": "integer"}}}
		defs[quantity] = obj{"oneOf": []any{obj{"type": "string"}, obj{"type": "number"}}}
		for name, d := range defs {
			defs[name] = normalize(d)
		}
		n := 0
		for _, name := range sortedKeys(defs) {
			for _, gvk := range gvks(defs[name]) {
				schema := closure(defs, name)
				if err := w.write(gvk.kind, gvk.group, gvk.version, schema, swagger); err != nil {
					return err
				}
				n++
			}
		}
		fmt.Printf("schemagen: %d Kubernetes schemas from %s\n", n, swagger)
	}
	for _, file := range crds {
		n, err := fromCRDs(w, file, defs)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		fmt.Printf("schemagen: %d schemas from %s\n", n, filepath.Base(file))
	}
	return nil
}

type gvk struct{ group, version, kind string }

func gvks(def any) []gvk {
	d, _ := def.(obj)
	list, _ := d["x-kubernetes-group-version-kind"].([]any)
	var res []gvk
	for _, e := range list {
		m, _ := e.(obj)
		g, _ := m["group"].(string)
		v, _ := m["version"].(string)
		k, _ := m["kind"].(string)
		// Lists, WatchEvent and friends are not resources anyone writes.
		if k == "" || strings.HasSuffix(k, "List") || k == "WatchEvent" || k == "Status" ||
			k == "DeleteOptions" || k == "APIVersions" || k == "APIGroup" {
			continue
		}
		res = append(res, gvk{g, v, k})
	}
	return res
}

// closure is a standalone schema for definition name: a $ref to it plus
// every definition it reaches (recursive types stay refs, never loop).
func closure(defs obj, name string) obj {
	need := map[string]bool{}
	var visit func(string)
	visit = func(n string) {
		if need[n] {
			return
		}
		need[n] = true
		walkRefs(defs[n], func(ref string) { visit(ref) })
	}
	visit(name)
	sub := obj{}
	for n := range need {
		sub[n] = defs[n]
	}
	return obj{
		"$schema":     "http://json-schema.org/draft-07/schema#",
		"$ref":        refPrefix + name,
		"definitions": sub,
	}
}

func walkRefs(v any, f func(string)) {
	switch t := v.(type) {
	case obj:
		for k, e := range t {
			if s, ok := e.(string); ok && k == "$ref" && strings.HasPrefix(s, refPrefix) {
				f(strings.TrimPrefix(s, refPrefix))
			} else {
				walkRefs(e, f)
			}
		}
	case []any:
		for _, e := range t {
			walkRefs(e, f)
		}
	}
}

// normalize rewrites one schema (OpenAPI v2 definition or CRD
// openAPIV3Schema) for a JSON-schema validator: closed objects, nullable,
// int-or-string; descriptions dropped to keep files small.
func normalize(v any) any {
	switch t := v.(type) {
	case obj:
		res := obj{}
		for k, e := range t {
			switch k {
			case "description", "example", "x-kubernetes-group-version-kind":
				if k == "x-kubernetes-group-version-kind" {
					res[k] = e // kept for gvks; harmless to a validator
				}
				continue
			case "properties", "definitions", "patternProperties":
				m, _ := e.(obj)
				props := obj{}
				for name, s := range m {
					props[name] = normalize(s)
				}
				res[k] = props
				continue
			}
			res[k] = normalize(e)
		}
		if b, _ := t["x-kubernetes-int-or-string"].(bool); b {
			delete(res, "type")
			delete(res, "anyOf")
			res["oneOf"] = []any{obj{"type": "string"}, obj{"type": "integer"}}
		}
		if f, _ := t["format"].(string); f == "int-or-string" {
			delete(res, "type")
			delete(res, "format")
			res["oneOf"] = []any{obj{"type": "string"}, obj{"type": "integer"}}
		}
		if b, _ := t["nullable"].(bool); b {
			if ty, ok := res["type"].(string); ok {
				res["type"] = []any{ty, "null"}
			}
			delete(res, "nullable")
		}
		_, hasProps := t["properties"]
		_, hasAdd := t["additionalProperties"]
		preserve, _ := t["x-kubernetes-preserve-unknown-fields"].(bool)
		if hasProps && !hasAdd && !preserve {
			res["additionalProperties"] = false
		}
		return res
	case []any:
		res := make([]any, len(t))
		for i, e := range t {
			res[i] = normalize(e)
		}
		return res
	default:
		return v
	}
}

func fromCRDs(w *writer, file string, defs obj) (int, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	n := 0
	for {
		var doc obj
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
		if doc == nil || doc["kind"] != "CustomResourceDefinition" {
			continue
		}
		doc = jsonable(doc).(obj)
		spec, _ := doc["spec"].(obj)
		group, _ := spec["group"].(string)
		names, _ := spec["names"].(obj)
		kind, _ := names["kind"].(string)
		versions, _ := spec["versions"].([]any)
		if group == "" || kind == "" || len(versions) == 0 {
			return n, fmt.Errorf("CustomResourceDefinition without group, kind or versions")
		}
		for _, v := range versions {
			ver, _ := v.(obj)
			name, _ := ver["name"].(string)
			sch, _ := ver["schema"].(obj)
			root, _ := sch["openAPIV3Schema"].(obj)
			if root == nil {
				return n, fmt.Errorf("%s %s/%s has no openAPIV3Schema", kind, group, name)
			}
			s := normalize(root).(obj)
			s["$schema"] = "http://json-schema.org/draft-07/schema#"
			if defs != nil {
				// The API server validates a custom resource's metadata as
				// ObjectMeta: so does kubeconform here.
				if props, ok := s["properties"].(obj); ok {
					props["metadata"] = obj{"$ref": refPrefix + objectMeta}
					s["definitions"] = closure(defs, objectMeta)["definitions"]
				}
			}
			if err := w.write(kind, group, name, s, file); err != nil {
				return n, err
			}
			n++
		}
	}
}

// jsonable turns YAML-decoded values into what encoding/json produces.
func jsonable(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = jsonable(e)
		}
		return t
	case map[any]any:
		m := obj{}
		for k, e := range t {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = jsonable(e)
		}
		return t
	default:
		return v
	}
}

type writer struct {
	dir  string
	seen map[string]string // file name -> apiVersion that wrote it
}

// write stores a schema under kubeconform's default file name and refuses a
// second, different group/version that maps to the same name.
func (w *writer) write(kind, group, version string, schema obj, from string) error {
	apiVersion := version
	suffix := "-" + strings.ToLower(version)
	if group != "" {
		apiVersion = group + "/" + version
		suffix = "-" + strings.ToLower(strings.Split(group, ".")[0]) + "-" + strings.ToLower(version)
	}
	name := strings.ToLower(kind) + suffix + ".json"
	id := apiVersion + " " + kind
	if prev, ok := w.seen[name]; ok && prev != id {
		return fmt.Errorf("%s: %s and %s both map to this file name", name, prev, id)
	}
	w.seen[name] = id
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(schema); err != nil {
		return fmt.Errorf("%s (%s): %w", id, from, err)
	}
	return os.WriteFile(filepath.Join(w.dir, name), buf.Bytes(), 0o644)
}

func sortedKeys(m obj) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
