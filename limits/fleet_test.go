package limits

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/natsembed"
)

func claimsBucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	topo := broker.Topology{}.Defaults()
	if err := broker.Provision(context.Background(), js, topo); err != nil {
		t.Fatal(err)
	}
	kv, _ := js.KeyValue(context.Background(), topo.ClaimsBucket)
	return kv
}

// Replicas that join see each other at once, and a leaving one is dropped.
func TestMembershipSplitsTheBudget(t *testing.T) {
	kv := claimsBucket(t)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var fleets []*Fleet
	cancels := []context.CancelFunc{}
	for _, name := range []string{"a", "b", "c"} {
		f := New(kv, Options{Holder: name, PerMinute: 600, Heartbeat: 100 * time.Millisecond})
		fctx, fcancel := context.WithCancel(ctx)
		cancels = append(cancels, fcancel)
		wg.Go(func() { _ = f.Run(fctx) })
		<-f.Ready()
		fleets = append(fleets, f)
	}
	// The last to join knows all three from the start.
	if n := fleets[2].Members(); n != 3 {
		t.Errorf("joiner sees %d members, want 3", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for fleets[0].Members() != 3 || fleets[0].processing.Limit() != 600.0/60/3 {
		if time.Now().After(deadline) {
			t.Fatalf("first member sees %d members, limit %v", fleets[0].Members(), fleets[0].processing.Limit())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancels[2]()
	deadline = time.Now().Add(5 * time.Second)
	for fleets[0].Members() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("a left member still counted: %d", fleets[0].Members())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
