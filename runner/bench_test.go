package runner

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/config"
)

// BenchmarkPipeline measures requests/s through the whole pipeline —
// JetStream request stream, decode, token cache, breaker, HTTP call to the
// simulator at zero latency, confirmed accepted event, ack — in one
// process on this machine. Run: make bench-quick (see README).
func BenchmarkPipeline(b *testing.B) {
	for _, concurrency := range []int{16, 64, 256} {
		b.Run(fmt.Sprintf("concurrency=%d", concurrency), func(b *testing.B) {
			h := newHarness(b)
			h.quiet = true
			h.start(func(c *config.Config) { c.Worker.Concurrency = concurrency })

			var accepted atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			sub, err := h.nc.Subscribe(h.topo.EventsPrefix()+".*.*.accepted", func(*nats.Msg) {
				if accepted.Add(1) == target {
					close(done)
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Unsubscribe()
			pub, err := nats.Connect(h.srv.URL())
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			js, err := jetstream.New(pub, jetstream.WithPublishAsyncMaxPending(4096))
			if err != nil {
				b.Fatal(err)
			}

			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				msg := nats.NewMsg(h.topo.RequestSubject("bench"))
				msg.Data = fmt.Appendf(nil, `{"requestId":"b-%d-%d","executable":"task-%d"}`, concurrency, i, i%50)
				if _, err := js.PublishMsgAsync(msg); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(5 * time.Minute):
				b.Fatal("publishing did not complete")
			}
			select {
			case <-done:
			case <-time.After(10 * time.Minute):
				b.Fatalf("%d of %d accepted", accepted.Load(), b.N)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
			if got := h.sim.Stats().ExecutionsTotal; got != b.N {
				b.Fatalf("%d executions for %d requests", got, b.N)
			}
		})
	}
}
