package tokenshare

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/internal/testnats"
	"github.com/tmc-runner/tmc-runner/talend"
)

func bucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	_, _, js := testnats.JetStream(t)
	topo := broker.Topology{}.Defaults()
	if err := broker.Provision(context.Background(), js, topo); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), topo.TokensBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func creds(secret string) talend.CredentialsFunc {
	return func() (talend.Credentials, error) { return talend.Credentials{ClientID: "id", Secret: secret}, nil }
}

// countingFetcher issues tok-1, tok-2, ... valid for life.
func countingFetcher(n *atomic.Int64, life time.Duration, delay time.Duration) talend.TokenFetcher {
	return func(ctx context.Context) (talend.Token, error) {
		i := n.Add(1)
		time.Sleep(delay)
		return talend.Token{Value: "tok-" + string(rune('0'+i)), Expiry: time.Now().Add(life)}, nil
	}
}

// Many replicas needing a token at once: one fetch for the whole fleet.
func TestOneFetchForTheFleet(t *testing.T) {
	kv := bucket(t)
	var fetches atomic.Int64
	local := countingFetcher(&fetches, 30*time.Minute, 200*time.Millisecond)
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		s := New(kv, Options{Holder: string(rune('a' + i)), Credentials: creds("secret")})
		wg.Go(func() {
			tok, err := s.Fetch(context.Background(), local, 5*time.Minute)
			if err != nil {
				t.Error(err)
			}
			got[i] = tok.Value
		})
	}
	wg.Wait()
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d token fetches for 8 replicas, want 1", n)
	}
	for i, v := range got {
		if v != "tok-1" {
			t.Errorf("replica %d got %q", i, v)
		}
	}
}

// The stored value does not reveal the token; another secret cannot read it.
func TestEncryptedAtRest(t *testing.T) {
	kv := bucket(t)
	var fetches atomic.Int64
	s := New(kv, Options{Holder: "a", Credentials: creds("secret")})
	tok, err := s.Fetch(context.Background(), countingFetcher(&fetches, 30*time.Minute, 0), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(context.Background(), tokenKey)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(entry.Value(), []byte(tok.Value)) {
		t.Fatal("the token is stored in clear")
	}
	other := New(kv, Options{Holder: "b", Credentials: creds("another-secret")})
	if cur, _, _, _ := other.current(context.Background()); cur.Value != "" {
		t.Errorf("a different secret decrypted the token: %q", cur.Value)
	}
}

// A 401 invalidates only the token that failed.
func TestInvalidateOnlyTheFailingToken(t *testing.T) {
	kv := bucket(t)
	var fetches atomic.Int64
	local := countingFetcher(&fetches, 30*time.Minute, 0)
	a := New(kv, Options{Holder: "a", Credentials: creds("secret")})
	b := New(kv, Options{Holder: "b", Credentials: creds("secret")})
	first, _ := a.Fetch(context.Background(), local, 5*time.Minute)
	a.Invalidate(context.Background(), first)
	second, _ := b.Fetch(context.Background(), local, 5*time.Minute)
	if second.Value == first.Value {
		t.Fatal("invalidated token handed out again")
	}
	// A late 401 for the old token must not drop the new one.
	a.Invalidate(context.Background(), first)
	third, _ := a.Fetch(context.Background(), local, 5*time.Minute)
	if third.Value != second.Value || fetches.Load() != 2 {
		t.Errorf("after a stale invalidation: %q (fetches %d), want %q kept", third.Value, fetches.Load(), second.Value)
	}
}

// A lease holder that died mid-refresh is replaced after the lease TTL.
func TestDeadLeaseHolderIsReplaced(t *testing.T) {
	kv := bucket(t)
	dead := New(kv, Options{Holder: "dead", Credentials: creds("secret"), LeaseTTL: 500 * time.Millisecond})
	if _, ok := dead.takeLease(context.Background()); !ok {
		t.Fatal("no lease")
	}
	var fetches atomic.Int64
	live := New(kv, Options{Holder: "live", Credentials: creds("secret"), LeaseTTL: 500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := live.Fetch(ctx, countingFetcher(&fetches, 30*time.Minute, 0), 5*time.Minute)
	if err != nil || tok.Value == "" || fetches.Load() != 1 {
		t.Fatalf("token %q err %v fetches %d", tok.Value, err, fetches.Load())
	}
}
