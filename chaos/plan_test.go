package chaos

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/tmc-runner/tmc-runner/messages"
)

// reqSpec is one request the suite publishes, and what must end it.
type reqSpec struct {
	id         string
	executable string
	await      bool
	shared     bool
	malformed  string // "", "bad-json", "unknown-field", "empty-executable"
	want       messages.EventType
}

const sharedTask = "shared-task"

// makeRequests draws the request mix from rng: ~1 % malformed, ~10 % on
// one shared executable (sharedRate) (reconciliation may meet genuinely ambiguous
// cases there), ~10 % followed to a result, the rest not followed.
func makeRequests(rng *rand.Rand, n int, sharedRate float64) []reqSpec {
	out := make([]reqSpec, n)
	malformedKinds := []string{"bad-json", "unknown-field", "empty-executable"}
	m := 0
	for i := range out {
		r := reqSpec{id: fmt.Sprintf("chaos-%05d", i), executable: fmt.Sprintf("task-%05d", i)}
		switch {
		case rng.Float64() < 0.01:
			r.malformed = malformedKinds[m%len(malformedKinds)]
			m++
			r.want = messages.Rejected
		default:
			if rng.Float64() < sharedRate {
				r.shared, r.executable = true, sharedTask
			}
			r.await = rng.Float64() < 0.10
			r.want = messages.Accepted
			if r.await {
				r.want = messages.Result
			}
		}
		out[i] = r
	}
	return out
}

// body is the message body of r.
func (r reqSpec) body() []byte {
	switch r.malformed {
	case "bad-json":
		return []byte(`{"requestId":"` + r.id + `","executable":`)
	case "unknown-field":
		return []byte(`{"requestId":"` + r.id + `","executable":"` + r.executable + `","bogus":1}`)
	case "empty-executable":
		return []byte(`{"requestId":"` + r.id + `","executable":""}`)
	}
	b, _ := json.Marshal(map[string]any{
		"requestId":   r.id,
		"executable":  r.executable,
		"parameters":  map[string]string{"rid": r.id},
		"awaitResult": r.await,
	})
	return b
}

// chaosKind names what the driver does.
type chaosKind string

const (
	kindKill       chaosKind = "kill -9 worker"
	kindRestart    chaosKind = "nats-server restart"
	kind5xx        chaosKind = "5xx burst"
	kind429        chaosKind = "429 storm"
	kindLatency    chaosKind = "latency spike"
	kindTokenOut   chaosKind = "token outage"
	kindExpireOnly chaosKind = "token expiry"
)

// chaosEvent is one planned fault with every random choice drawn up front,
// so a seed replays the same schedule.
type chaosEvent struct {
	at         time.Duration
	kind       chaosKind
	worker     int
	downtime   time.Duration // worker or server down for this long
	status     int
	count      int
	rate       float64
	retryAfter string
	dur        time.Duration
	latency    time.Duration
	afterStart bool // kill while a started run's answer is held back
}

// makePlan spreads faults over the publishing window d: at least four
// worker kills, one nats-server restart (mid-run), two each of 5xx bursts,
// 429 storms and latency spikes, and one token outage; more for longer
// windows.
func makePlan(rng *rand.Rand, d time.Duration, workers int) []chaosEvent {
	per := func(every time.Duration, least int) int { return max(least, int(d/every)) }
	at := func(lo, hi float64) time.Duration {
		return time.Duration((lo + rng.Float64()*(hi-lo)) * float64(d))
	}
	ms := func(lo, hi int) time.Duration { return time.Duration(lo+rng.IntN(hi-lo+1)) * time.Millisecond }
	var plan []chaosEvent
	for i := range per(6*time.Second, 4) {
		// Every other kill lands after Talend started a run and before its
		// answer arrived: the case reconciliation has to sort out.
		plan = append(plan, chaosEvent{at: at(0.1, 0.95), kind: kindKill, worker: rng.IntN(workers), downtime: ms(200, 1500), afterStart: i%2 == 1})
	}
	for i := range per(45*time.Second, 1) {
		lo := 0.3
		if i > 0 {
			lo = 0.1
		}
		plan = append(plan, chaosEvent{at: at(lo, 0.7), kind: kindRestart, downtime: ms(300, 1500)})
	}
	for range per(15*time.Second, 2) {
		statuses := []int{500, 502, 503, 504}
		e := chaosEvent{at: at(0.05, 0.9), kind: kind5xx, status: statuses[rng.IntN(len(statuses))], count: 20 + rng.IntN(31)}
		if e.status == 503 && rng.IntN(2) == 0 {
			e.retryAfter = "1"
		}
		plan = append(plan, e)
	}
	for i := range per(15*time.Second, 2) {
		e := chaosEvent{at: at(0.05, 0.9), kind: kind429, rate: 0.3 + rng.Float64()*0.6, dur: ms(2000, 4000)}
		if i%2 == 0 {
			e.retryAfter = "1"
		}
		plan = append(plan, e)
	}
	for range per(15*time.Second, 2) {
		plan = append(plan, chaosEvent{at: at(0.05, 0.9), kind: kindLatency, latency: ms(1000, 3000), dur: ms(1000, 3000)})
	}
	for range per(30*time.Second, 1) {
		plan = append(plan, chaosEvent{at: at(0.1, 0.8), kind: kindTokenOut, dur: ms(2000, 5000)})
	}
	sort.SliceStable(plan, func(i, j int) bool { return plan[i].at < plan[j].at })
	return plan
}
