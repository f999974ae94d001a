package jswrite

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/internal/testnats"
)

func TestWritesAgainstAServer(t *testing.T) {
	_, nc, js := testnats.JetStream(t)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	w := New(nc, 2*time.Second)

	rev, err := w.Put(ctx, "b", "k.1", []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "k.1")
	if err != nil || string(e.Value()) != "one" || e.Revision() != rev {
		t.Fatalf("after Put: %v %v, want value one at revision %d", e, err, rev)
	}

	created, err := w.Create(ctx, "b", "k.2", []byte("two"))
	if err != nil || created <= rev {
		t.Fatalf("Create of a new key: %d, %v", created, err)
	}
	_, err = w.Create(ctx, "b", "k.2", []byte("again"))
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Fatalf("Create of an existing key: %v, want wrong last sequence", err)
	}
	if e, _ := kv.Get(ctx, "k.2"); string(e.Value()) != "two" {
		t.Fatalf("refused Create changed the value to %q", e.Value())
	}
	// A delete marker is refused too; the bucket's own Create handles it.
	if err := kv.Delete(ctx, "k.2"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Create(ctx, "b", "k.2", []byte("three")); !errors.As(err, &apiErr) {
		t.Fatalf("Create over a delete marker: %v, want a refusal", err)
	}

	if _, err := w.Write(ctx, &nats.Msg{Subject: "no.stream.here", Data: []byte("x")}); !errors.Is(err, ErrNoStream) {
		t.Fatalf("write to a subject no stream takes: %v, want ErrNoStream", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := w.Put(done, "b", "k.3", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("write with a cancelled context: %v", err)
	}
}

func TestParseAck(t *testing.T) {
	for _, tc := range []struct {
		ack     string
		seq     uint64
		errCode jetstream.ErrorCode // 0: no API error
		fails   bool
	}{
		{ack: `{"stream":"KV_b","seq":42}`, seq: 42},
		{ack: `{"stream":"KV_b","domain":"hub","seq":7}`, seq: 7},
		{ack: `{"stream":"EV","seq":18446744073709551615,"duplicate":true}`, seq: 18446744073709551615},
		{ack: `{"stream":"error","seq":3}`, seq: 3},
		{ack: `{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"},"stream":"KV_b","seq":0}`, errCode: 10071},
		{ack: `{"stream":"KV_b","error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`, errCode: 10077},
		{ack: `{"seq":5}`, fails: true},
		{ack: `not json`, fails: true},
		{ack: ``, fails: true},
	} {
		seq, err := ParseAck([]byte(tc.ack))
		var apiErr *jetstream.APIError
		switch {
		case tc.errCode != 0:
			if !errors.As(err, &apiErr) || apiErr.ErrorCode != tc.errCode {
				t.Errorf("%s: %v, want API error %d", tc.ack, err, tc.errCode)
			}
		case tc.fails:
			if err == nil || errors.As(err, &apiErr) {
				t.Errorf("%s: %d, %v, want a decoding error", tc.ack, seq, err)
			}
		default:
			if err != nil || seq != tc.seq {
				t.Errorf("%s: %d, %v, want %d", tc.ack, seq, err, tc.seq)
			}
		}
	}
}

// Compare with the library: go test -bench . -benchmem ./internal/jswrite
// (the server runs in the same process, so ns/op includes its share).
func BenchmarkPut(b *testing.B) {
	_, nc, js := testnats.JetStream(b)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b", History: 1})
	if err != nil {
		b.Fatal(err)
	}
	value := []byte(`{"requestId":"r-000001","route":"default","callFrom":1796418000000,"executionId":"0f20438d-6cb4-40e9-be51-8e676037cc45"}`)
	w := New(nc, 2*time.Second)
	b.Run("library", func(b *testing.B) {
		for b.Loop() {
			if _, err := kv.Put(ctx, "incall.abc.29940300.r-000001", value); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jswrite", func(b *testing.B) {
		for b.Loop() {
			if _, err := w.Put(ctx, "b", "incall.abc.29940300.r-000001", value); err != nil {
				b.Fatal(err)
			}
		}
	})
}
