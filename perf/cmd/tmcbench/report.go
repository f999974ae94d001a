package main

import (
	"fmt"
	"math"
	"strings"
)

func markdown(rep Report) string {
	var b strings.Builder
	mode := "full"
	if rep.Quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "# tmcbench %s\n\n%s, %d CPUs, %s mode, %s measurement window per row after warm-up.\n", rep.Date, rep.Go, rep.CPUs, mode, rep.Window)
	if rep.Repeat > 1 {
		fmt.Fprintf(&b, "Every row ran %d times, interleaved (all rows, then all again); each row shows its median run, and the req/s column lists every run.\n", rep.Repeat)
	}
	b.WriteString("nats-server (embedded, file storage), simulator and OTLP receiver in the driver process; each pipeline in its own process (CPU and RSS are that process's).\n")
	b.WriteString("Throughput: closed loop, the publisher keeps 1.5×concurrency+64 requests outstanding. Latency (p50/p99): then an open-loop load at 70% of that throughput; request publish time (metadata) → stream timestamp of its `accepted` event.\n")
	b.WriteString("Rows ending -inproc: the pipeline runs inside the driver process, like the issue's quoted one-process baseline; their CPU µs/req is the whole process's (server, simulator, load generator and pipeline).\n")
	b.WriteString("CPU µs/req: the pipeline process's utime+stime over the window / requests completed. NATS msgs/req: messages the pipeline's connections sent to the server per request. Driver CPU: nats-server + simulator + load generator.\n\n")
	b.WriteString("| row | pipeline | latency | conc | tracing | req/s | worker/baseline | p50 ms | p99 ms | CPU µs/req | peak RSS MB | conc/latency eff. | NATS msgs/req | driver CPU µs/req |\n")
	b.WriteString("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rep.Rows {
		tr := r.Tracing
		if r.Follow {
			tr += " + follow-ups"
		}
		if r.Pipeline == "baseline" {
			tr = "-"
		}
		ratio, eff := "", ""
		if r.Pipeline == "worker" && r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		if r.Efficiency > 0 {
			eff = fmt.Sprintf("%.0f%%", 100*r.Efficiency)
		}
		if r.Err != "" && r.Completed == 0 {
			fmt.Fprintf(&b, "| %s | %s | %d ms | %d | %s | error: %s | | | | | | | | |\n", r.Name, r.Pipeline, r.LatencyMS, r.Concurrency, tr, r.Err)
			continue
		}
		pipeline, rss, driver := r.Pipeline, fmt.Sprintf("%.1f", r.PeakRSSMB), fmt.Sprintf("%.0f", r.DriverCPUusPerReq)
		if r.InProcess {
			// One process: its CPU is everything's, its RSS the driver's.
			pipeline, rss, driver = r.Pipeline+" (one process)", "-", "(in CPU)"
		}
		rps := fmt.Sprintf("%.0f", r.RPS)
		if len(r.Runs) > 1 {
			var all []string
			for _, x := range r.Runs {
				all = append(all, fmt.Sprintf("%.0f", x))
			}
			rps += " (" + strings.Join(all, " · ") + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %d ms | %d | %s | %s | %s | %.1f | %.1f | %.0f | %s | %s | %.1f | %s |\n",
			r.Name, pipeline, r.LatencyMS, r.Concurrency, tr, rps, ratio, r.P50ms, r.P99ms, r.CPUusPerReq, rss, eff, r.NATSMsgsPerReq, driver)
	}
	var notes []string
	for _, r := range rep.Rows {
		if r.Err != "" && r.Completed > 0 {
			notes = append(notes, fmt.Sprintf("- %s: %s", r.Name, r.Err))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\nNotes:\n" + strings.Join(notes, "\n") + "\n")
	}
	if f := rep.Fleet; f != nil {
		b.WriteString("\n## Fleet rate budget\n\n")
		if f.Err != "" && f.Completed == 0 {
			fmt.Fprintf(&b, "error: %s\n", f.Err)
		} else {
			b.WriteString("| workers | simulator limit | fleet budget | req/s | share of budget | share of simulator limit | 429s (in window / whole run) | CPU µs/req | max peak RSS MB |\n")
			b.WriteString("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
			fmt.Fprintf(&b, "| %d | %s | %.0f/min | %.2f | %.1f%% | %.1f%% | %d / %d | %.0f | %.1f |\n", f.Workers, f.SimLimit, f.BudgetPerMin,
				f.RPS, 100*f.BudgetShare, 100*f.SimLimitShare, f.RateLimitedWin, f.RateLimited, f.CPUusPerRequest, f.MaxPeakRSSMB)
			start := "workers up for 8 s before it: membership known"
			if f.ColdStart {
				start = "cold start: backlog queued before the three workers started together"
			}
			fmt.Fprintf(&b, "\n%d accepted in %.1f s, starting 5 s after the backlog was queued (%s). Breaker opened (workers' log lines): %d.", f.Completed, f.Seconds, start, f.BreakerOpened)
			if f.Err != "" {
				fmt.Fprintf(&b, " Note: %s", f.Err)
			}
			b.WriteString("\n")
		}
	}
	if k := rep.Backlog; k != nil {
		b.WriteString("\n## Backlog (bounded memory)\n\n")
		if k.Err != "" {
			fmt.Fprintf(&b, "error: %s\n", k.Err)
		} else {
			fmt.Fprintf(&b, "%d requests queued before the worker started; concurrency %d, simulator latency %d ms; VmRSS sampled every second for %d s (from 3 s after start): min %.1f MB, max %.1f MB (peak VmHWM %.1f MB); %d accepted while sampled (%.0f/s), %d still pending at the end.\n\nRSS MB per second: %v\n",
				k.Backlog, k.Concurrency, k.LatencyMS, k.Seconds, k.MinRSSMB, k.MaxRSSMB, k.PeakRSSMB, k.Completed, float64(k.Completed)/float64(k.Seconds), k.PendingEnd, k.RSSMB)
		}
	}
	return b.String()
}

// plotSVG draws requests/s against concurrency, one panel per latency,
// baseline and worker (unsampled tracing, no follow-ups) as lines.
func plotSVG(rep Report) string {
	const pw, ph, ml, mr, mt, mb = 420.0, 300.0, 70.0, 20.0, 40.0, 50.0
	var b strings.Builder
	lats := []int{0, 100}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", pw*float64(len(lats)), ph+30)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	type series struct {
		label, color string
		match        func(Result) bool
	}
	ss := []series{
		{"baseline", "#1f77b4", func(r Result) bool { return r.Pipeline == "baseline" && !r.InProcess }},
		{"worker (unsampled)", "#d62728", func(r Result) bool {
			return r.Pipeline == "worker" && r.Tracing == "unsampled" && !r.Follow && !r.InProcess
		}},
		{"worker (sampled)", "#ff7f0e", func(r Result) bool {
			return r.Pipeline == "worker" && r.Tracing == "sampled" && !r.Follow && !r.InProcess
		}},
	}
	for pi, lat := range lats {
		ox := float64(pi) * pw
		var concs []int
		ymax := 0.0
		for _, r := range rep.Rows {
			if r.LatencyMS == lat && r.Err == "" {
				ymax = math.Max(ymax, r.RPS)
				found := false
				for _, c := range concs {
					found = found || c == r.Concurrency
				}
				if !found {
					concs = append(concs, r.Concurrency)
				}
			}
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="20" text-anchor="middle" font-weight="bold">Talend latency %d ms</text>`+"\n", ox+pw/2, lat)
		if len(concs) == 0 || ymax == 0 {
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">no data</text>`+"\n", ox+pw/2, ph/2)
			continue
		}
		ymax = niceCeil(ymax * 1.1)
		cmin, cmax := concs[0], concs[0]
		for _, c := range concs {
			cmin, cmax = min(cmin, c), max(cmax, c)
		}
		// log2 x axis, padded by half an octave on each side.
		lx0, lx1 := math.Log2(float64(cmin))-0.5, math.Log2(float64(cmax))+0.5
		x := func(c int) float64 { return ox + ml + (math.Log2(float64(c))-lx0)/(lx1-lx0)*(pw-ml-mr) }
		y := func(v float64) float64 { return mt + (1-v/ymax)*(ph-mt-mb) }
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", ox+ml, y(0), ox+pw-mr, y(0))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", ox+ml, y(0), ox+ml, y(ymax))
		for i := 0; i <= 4; i++ {
			v := ymax * float64(i) / 4
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%.0f</text>`+"\n",
				ox+ml, y(v), ox+pw-mr, y(v), ox+ml-5, y(v)+4, v)
		}
		for _, c := range concs {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%d</text>`+"\n", x(c), y(0)+16, c)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">concurrency</text>`+"\n", ox+ml+(pw-ml-mr)/2, ph-12)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" transform="rotate(-90 %.1f %.1f)">requests/s</text>`+"\n", ox+16, mt+(ph-mt-mb)/2, ox+16, mt+(ph-mt-mb)/2)
		if lat > 0 {
			// ideal: concurrency / latency
			var pts []string
			for _, c := range concs {
				v := float64(c) / (float64(lat) / 1000)
				if v <= ymax {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(c), y(v)))
				}
			}
			if len(pts) > 1 {
				fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="#999" stroke-dasharray="4 3"/>`+"\n", strings.Join(pts, " "))
			}
		}
		for si, s := range ss {
			var pts []string
			for _, r := range rep.Rows {
				if r.LatencyMS == lat && r.Err == "" && s.match(r) {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(r.Concurrency), y(r.RPS)))
					fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x(r.Concurrency), y(r.RPS), s.color)
				}
			}
			if len(pts) > 1 {
				fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), s.color)
			}
			if pi == 0 {
				fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="12" height="3" fill="%s"/><text x="%.0f" y="%.0f">%s</text>`+"\n",
					10+float64(si)*170, ph+12, s.color, 26+float64(si)*170, ph+17, s.label)
			}
		}
		if lat > 0 && pi == 1 {
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" fill="#666">dashed: concurrency/latency</text>`+"\n", ox+ml, ph+17)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 7.5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
