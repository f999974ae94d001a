// Package jswrite stores one message in a JetStream stream and waits for
// the stream's ack: what jetstream.Publish and a key-value Put or Create
// do, without their per-call context, option handling, key validation by
// regular expression and encoding/json decoding of the ack. The worker
// makes four such writes per request; in its CPU profile that overhead
// (context timers, ack decoding, key checks) was about 8 % of the process.
//
// Refusals come back as *jetstream.APIError, so errors.As and the
// jetstream error codes work as with the library's own publish. Anything
// unusual (no stream answering, an ack the fast parser does not know) is
// returned as an error or decoded the slow way; callers that need the
// library's retries fall back to it on error.
package jswrite

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Writer writes through one connection.
type Writer struct {
	nc      *nats.Conn
	timeout time.Duration
}

// New returns a Writer whose writes wait at most timeout for their ack
// (or less, if the context's deadline is sooner).
func New(nc *nats.Conn, timeout time.Duration) *Writer {
	return &Writer{nc: nc, timeout: timeout}
}

// ErrNoStream is returned when no stream took the message (none bound to
// the subject, or its leader is being elected).
var ErrNoStream = errors.New("jswrite: no stream answered")

// Write stores msg and returns its stream sequence.
func (w *Writer) Write(ctx context.Context, msg *nats.Msg) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	timeout := w.timeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	resp, err := w.nc.RequestMsg(msg, timeout)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return 0, fmt.Errorf("write %s: %w", msg.Subject, ErrNoStream)
		}
		return 0, fmt.Errorf("write %s: %w", msg.Subject, err)
	}
	return ParseAck(resp.Data)
}

// Put stores value under key in a key-value bucket (a message on the
// key's subject, as the bucket's own Put does).
func (w *Writer) Put(ctx context.Context, bucket, key string, value []byte) (uint64, error) {
	return w.Write(ctx, &nats.Msg{Subject: "$KV." + bucket + "." + key, Data: value})
}

// Create stores value under key only if the key has never held a value
// (expected last subject sequence 0). A key that holds one, or only a
// delete marker, is refused with jetstream's wrong-last-sequence error:
// callers that must create over a delete marker fall back to the bucket's
// own Create, which handles it.
func (w *Writer) Create(ctx context.Context, bucket, key string, value []byte) (uint64, error) {
	msg := &nats.Msg{Subject: "$KV." + bucket + "." + key, Data: value, Header: nats.Header{}}
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	return w.Write(ctx, msg)
}

var (
	seqField   = []byte(`"seq":`)
	errorField = []byte(`"error"`)
)

// ParseAck reads a stream's ack: {"stream":"S","seq":N,...} or
// {"error":{"code":C,"err_code":E,"description":"..."},...}.
func ParseAck(data []byte) (uint64, error) {
	if bytes.HasPrefix(data, []byte(`{"stream":`)) && !bytes.Contains(data, errorField) {
		if i := bytes.Index(data, seqField); i >= 0 {
			var seq uint64
			digits := 0
			for _, c := range data[i+len(seqField):] {
				if c < '0' || c > '9' {
					break
				}
				seq = seq*10 + uint64(c-'0')
				digits++
			}
			if digits > 0 && digits < 20 {
				return seq, nil
			}
		}
	}
	var ack struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
		Seq    uint64              `json:"seq"`
	}
	if err := json.Unmarshal(data, &ack); err != nil {
		return 0, fmt.Errorf("jswrite: ack %q: %w", truncate(data), err)
	}
	if ack.Error != nil {
		return 0, ack.Error
	}
	if ack.Stream == "" {
		return 0, fmt.Errorf("jswrite: ack %q names no stream", truncate(data))
	}
	return ack.Seq, nil
}

func truncate(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}
