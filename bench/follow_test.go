package bench

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/follow"
	"github.com/tmc-runner/tmc-runner/messages"
	"github.com/tmc-runner/tmc-runner/natsembed"
	"github.com/tmc-runner/tmc-runner/talend"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// TestFollowEconomy measures what following costs: Talend calls per
// execution for runs of 10 s, 1 min and 10 min, with 1 and with 200 runs in
// flight, and the delay between a run's end and its result event. Time is
// compressed: the simulator's clock and the follower's clock run `factor`
// times faster than real time, and the follower's intervals are in that
// simulated time, so the figures are those real runs would see with the
// default settings (2 s to 30 s, a tenth of the run's age).
//
//	TMC_BENCH=1 go test -run TestFollowEconomy -v ./bench
func TestFollowEconomy(t *testing.T) {
	if os.Getenv("TMC_BENCH") == "" {
		t.Skip("a measurement, not a test: TMC_BENCH=1 go test -run TestFollowEconomy -v ./bench (make bench-follow)")
	}
	const factor = 60.0
	type row struct {
		runFor   time.Duration
		inFlight int
		calls    float64
		p50, max time.Duration
	}
	var rows []row
	for _, runFor := range []time.Duration{10 * time.Second, time.Minute, 10 * time.Minute} {
		for _, inFlight := range []int{1, 200} {
			calls, delays := measureFollow(t, runFor, inFlight, factor)
			slices.Sort(delays)
			rows = append(rows, row{runFor, inFlight, calls, delays[len(delays)/2], delays[len(delays)-1]})
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| run length | runs in flight | Talend calls per execution | result delay after the run's end: median / max |\n| --- | --- | --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %.1f | %s / %s |\n", r.runFor, r.inFlight, r.calls, r.p50.Round(100*time.Millisecond), r.max.Round(100*time.Millisecond))
	}
	t.Logf("\n%s", b.String())
	if out := os.Getenv("TMC_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// measureFollow starts inFlight runs of length runFor and follows them to
// their results; it returns Talend calls per execution spent on following
// (starting the runs excluded) and the result delays in simulated time.
func measureFollow(t *testing.T, runFor time.Duration, inFlight int, factor float64) (float64, []time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	topo := broker.Topology{}.Defaults()
	if err := broker.Provision(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(ctx, topo.ClaimsBucket)

	clock := talendsim.ScaledClock(time.Now(), factor)
	sim := talendsim.New(talendsim.Options{KnowAll: true, Clock: clock, DispatchFor: 5 * time.Second, RunFor: runFor - 5*time.Second})
	hs := httptest.NewServer(sim)
	defer hs.Close()
	client, err := talend.NewClient(talend.Config{BaseURL: hs.URL, Now: clock, Credentials: func() (talend.Credentials, error) {
		return talend.Credentials{ClientID: "dev-client", Secret: "dev-secret"}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	cfg := follow.Config{Holder: "bench", Now: clock, Tick: time.Duration(float64(500*time.Millisecond) / factor)}
	f := follow.New(cfg, kv, client, broker.NewPublisher(js, topo, "bench", nil, nil))

	results := make(chan *messages.Event, inFlight)
	sub, err := nc.Subscribe(topo.EventsPrefix()+".*.*.result", func(m *nats.Msg) {
		if ev, err := messages.DecodeEvent(m.Data); err == nil {
			results <- ev
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	for i := range inFlight {
		id, err := client.RunTask(ctx, talend.TaskRun{Executable: "job"})
		if err != nil {
			t.Fatal(err)
		}
		rec := follow.Record{RequestID: fmt.Sprintf("r%03d", i), Route: "bench", Executable: "job", Kind: messages.KindTask,
			ExecutionID: id, Attempt: 1, AcceptedAt: clock(), Deadline: clock().Add(runFor + time.Hour)}
		if err := f.Track(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	startCalls := sim.Stats().APICalls
	var wg sync.WaitGroup
	wg.Go(func() { _ = f.Run(ctx) })
	defer wg.Wait()
	defer cancel()

	var delays []time.Duration
	timeout := time.After(time.Duration(float64(runFor+5*time.Minute)/factor) + 30*time.Second)
	for len(delays) < inFlight {
		select {
		case ev := <-results:
			if ev.OK == nil || !*ev.OK || ev.FinishTime == nil {
				t.Fatalf("result %+v", ev)
			}
			delays = append(delays, ev.Time.Sub(*ev.FinishTime))
		case <-timeout:
			t.Fatalf("%d of %d results", len(delays), inFlight)
		}
	}
	return float64(sim.Stats().APICalls-startCalls) / float64(inFlight), delays
}
