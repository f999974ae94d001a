package main

import (
	"encoding/xml"
	"os"
	"strings"
	"testing"
)

func TestProcReadings(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	if mb := procStatusMB(os.Getpid(), "VmHWM"); mb <= 0 {
		t.Fatalf("VmHWM = %v MB", mb)
	}
}

func TestPercentile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3}
	if got := percentile(v, 0.5); got != 3 {
		t.Fatalf("p50 = %v", got)
	}
	if got := percentile(nil, 0.99); got != 0 {
		t.Fatalf("empty p99 = %v", got)
	}
}

func TestReportAndPlot(t *testing.T) {
	rows := []Result{
		{Spec: Spec{Name: "b0", Pipeline: "baseline", Concurrency: 64}, RPS: 1000, Completed: 1},
		{Spec: Spec{Name: "w0", Pipeline: "worker", Concurrency: 64, Tracing: "unsampled"}, RPS: 800, Completed: 1},
		{Spec: Spec{Name: "b1", Pipeline: "baseline", Concurrency: 256}, RPS: 1200, Completed: 1},
		{Spec: Spec{Name: "w1", Pipeline: "worker", Concurrency: 256, Tracing: "unsampled"}, RPS: 900, Completed: 1},
		{Spec: Spec{Name: "b2", Pipeline: "baseline", LatencyMS: 100, Concurrency: 128}, RPS: 1200, Completed: 1},
	}
	fillRatios(rows)
	if rows[1].Ratio != 0.8 || rows[4].Efficiency != 1200.0/1280 {
		t.Fatalf("ratio %v efficiency %v", rows[1].Ratio, rows[4].Efficiency)
	}
	rep := Report{Rows: rows, Fleet: &FleetResult{Completed: 1}, Backlog: &BacklogResult{RSSMB: []float64{1}}}
	if md := markdown(rep); !strings.Contains(md, "| w0 | worker | 0 ms | 64 | unsampled | 800 | 0.80 |") {
		t.Fatalf("markdown:\n%s", md)
	}
	svg := plotSVG(rep)
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		if _, err := d.Token(); err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("SVG not well-formed: %v", err)
		}
	}
}

func TestMedianRun(t *testing.T) {
	rs := []Result{{RPS: 300, P50ms: 3}, {RPS: 100, P50ms: 1}, {RPS: 200, P50ms: 2}}
	m := medianRun(rs)
	if m.RPS != 200 || m.P50ms != 2 {
		t.Fatalf("median run %+v, want the 200 req/s one with its own figures", m)
	}
	if len(m.Runs) != 3 || m.Runs[0] != 300 || m.Runs[1] != 100 || m.Runs[2] != 200 {
		t.Fatalf("runs %v, want every run in order", m.Runs)
	}
	if m := medianRun(rs[:2]); m.RPS != 100 {
		t.Fatalf("median of two = %v, want the lower", m.RPS)
	}
}
