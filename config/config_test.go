package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadDefaults(t *testing.T) {
	cfg, err := Load(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Worker.Concurrency != 64 || cfg.Worker.AdminAddr != ":9090" || !cfg.Worker.Provision || cfg.Worker.EventSource != "tmc-runner" {
		t.Errorf("defaults: %+v", cfg.Worker)
	}
	topo := cfg.Worker.Topology()
	if topo.RunsStream != "TMC_RUNS" || topo.ClaimsBucket != "tmc_claims" || topo.RequestSubject("a") != "tmc.runs.request.a" {
		t.Errorf("topology defaults: %+v", topo)
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, err := Load(map[string]string{
		"TMC_CONCURRENCY":      "many",
		"TMC_LOG_LEVEL":        "loud",
		"TMC_REPLICAS":         "2",
		"TALEND_API_URL":       "ftp://x",
		"TALEND_REGION":        "mars",
		"TALEND_CLIENT_SECRET": "s", "TALEND_CLIENT_SECRET_FILE": "/f",
		"NATS_CERT": "/c",
	})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"TMC_CONCURRENCY", "TMC_LOG_LEVEL", "TMC_REPLICAS", "TALEND_API_URL and TALEND_REGION", "TALEND_API_URL: must be", "TALEND_REGION=", "TALEND_CLIENT_SECRET and TALEND_CLIENT_SECRET_FILE", "NATS_CERT and NATS_KEY"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "\"s\"") {
		t.Error("a secret value appears in the error")
	}
}

func TestRequireProduction(t *testing.T) {
	cfg, err := Load(map[string]string{"TALEND_CLIENT_SECRET_FILE": "/does/not/exist"})
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.RequireProduction()
	for _, want := range []string{"NATS_URL", "TALEND_API_URL or TALEND_REGION", "TALEND_CLIENT_ID", "TALEND_CLIENT_SECRET_FILE=/does/not/exist"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestRegionAndCredentialsFiles(t *testing.T) {
	dir := t.TempDir()
	idFile, secretFile := filepath.Join(dir, "id"), filepath.Join(dir, "secret")
	os.WriteFile(idFile, []byte("client-1\n"), 0o600)
	os.WriteFile(secretFile, []byte("first\n"), 0o600)
	cfg, err := Load(map[string]string{"TALEND_REGION": "eu", "TALEND_CLIENT_ID_FILE": idFile, "TALEND_CLIENT_SECRET_FILE": secretFile})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Talend.BaseURL(); got != "https://api.eu.cloud.talend.com" {
		t.Errorf("base URL %q", got)
	}
	creds := cfg.Talend.Credentials()
	c, err := creds()
	if err != nil || c.ClientID != "client-1" || c.Secret != "first" {
		t.Fatalf("credentials %+v, %v", c, err)
	}
	// A rotated secret is read on the next call, without a restart.
	os.WriteFile(secretFile, []byte("second\n"), 0o600)
	if c, _ := creds(); c.Secret != "second" {
		t.Errorf("rotated secret not re-read: %q", c.Secret)
	}
}

func TestPrefetch(t *testing.T) {
	base := map[string]string{"TALEND_REGION": "eu", "TALEND_CLIENT_ID": "id", "TALEND_CLIENT_SECRET": "s"}
	with := func(v string) map[string]string {
		m := map[string]string{"TMC_PREFETCH": v}
		for k, x := range base {
			m[k] = x
		}
		return m
	}
	cfg, err := Load(base)
	if err != nil || cfg.Worker.Prefetch != nil {
		t.Fatalf("unset: %v, %v; want nil (the worker's default)", cfg.Worker.Prefetch, err)
	}
	cfg, err = Load(with("0"))
	if err != nil || cfg.Worker.Prefetch == nil || *cfg.Worker.Prefetch != 0 {
		t.Fatalf("0: %v, %v", cfg.Worker.Prefetch, err)
	}
	if _, err := Load(with("-1")); err == nil || !strings.Contains(err.Error(), "TMC_PREFETCH=-1") {
		t.Fatalf("-1: %v, want a TMC_PREFETCH problem", err)
	}
}
