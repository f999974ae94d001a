package follow

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

type fakeEntry struct {
	key string
	val []byte
	rev uint64
	op  jetstream.KeyValueOp
}

func (e fakeEntry) Bucket() string                  { return "tmc_claims" }
func (e fakeEntry) Key() string                     { return e.key }
func (e fakeEntry) Value() []byte                   { return e.val }
func (e fakeEntry) Revision() uint64                { return e.rev }
func (e fakeEntry) Created() time.Time              { return time.Time{} }
func (e fakeEntry) Delta() uint64                   { return 0 }
func (e fakeEntry) Operation() jetstream.KeyValueOp { return e.op }

type fakeWatcher struct{ ch chan jetstream.KeyValueEntry }

func (w fakeWatcher) Updates() <-chan jetstream.KeyValueEntry { return w.ch }
func (w fakeWatcher) Stop() error                             { return nil }

// The mirror may lag behind the lease holder: a record the holder already
// finished (result stored, record deleted) must not come back when the
// watch delivers its older puts late, or the holder would follow the run a
// second time. A later record under the same key (a new Track) counts.
func TestMirrorDoesNotResurrectFinishedRecords(t *testing.T) {
	f := New(Config{Holder: "a"}, nil, nil, nil)
	rec := Record{RequestID: "r1", ExecutionID: "e1", Kind: "task"}
	put := func(rev uint64, status string) jetstream.KeyValueEntry {
		r := rec
		r.LastStatus = status
		data, _ := json.Marshal(r)
		return fakeEntry{key: key(rec.RequestID), val: data, rev: rev, op: jetstream.KeyValuePut}
	}
	tracked := func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		_, ok := f.entries[rec.RequestID]
		return ok
	}

	// Track (rev 5), a status update (rev 6), then the result: the record
	// is deleted and forgotten, all before the watch delivered anything.
	f.upsert(rec, 5)
	f.upsert(rec, 6)
	f.forget(rec.RequestID, 6)

	mirror := func(updates ...jetstream.KeyValueEntry) {
		w := fakeWatcher{ch: make(chan jetstream.KeyValueEntry, len(updates))}
		for _, u := range updates {
			w.ch <- u
		}
		close(w.ch)
		f.mirror(w) // returns once the channel is drained
	}
	mirror(put(5, ""), put(6, "dispatching"), nil)
	if tracked() {
		t.Error("a finished record came back from a late watch update")
	}
	mirror(fakeEntry{key: key(rec.RequestID), rev: 7, op: jetstream.KeyValueDelete}, put(8, "")) // tracked again (a new Create)
	if !tracked() {
		t.Error("a record created after the deletion is not followed")
	}
}
