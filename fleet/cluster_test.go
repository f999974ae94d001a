package fleet

import (
	"context"
	"fmt"
	"github.com/tmc-runner/tmc-runner/internal/testlog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tmc-runner/tmc-runner/broker"
	"github.com/tmc-runner/tmc-runner/talendsim"
)

// node is one server of the test cluster; its ports and store survive a
// restart.
type node struct {
	name       string
	clientPort int
	routePort  int
	storeDir   string
	srv        *server.Server
}

func (n *node) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.clientPort) }

// freePort picks a free port below the kernel's ephemeral range: a node
// shut down and restarted on its port must not find it taken by another
// process that asked for port 0 meanwhile.
func freePort(t *testing.T) int {
	t.Helper()
	for range 200 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		return port
	}
	t.Fatal("no free port between 20000 and 32000")
	return 0
}

// cluster is three embedded nats-servers with JetStream, routed to each
// other.
type cluster struct {
	t     *testing.T
	nodes []*node
}

func startCluster(t *testing.T, size int) *cluster {
	t.Helper()
	c := &cluster{t: t}
	for i := range size {
		c.nodes = append(c.nodes, &node{
			name: fmt.Sprintf("tmc-%d", i), clientPort: freePort(t), routePort: freePort(t), storeDir: t.TempDir(),
		})
	}
	for _, n := range c.nodes {
		c.start(n)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if n.srv != nil {
				n.srv.Shutdown()
				n.srv.WaitForShutdown()
			}
		}
	})
	c.waitMetaLeader()
	return c
}

func (c *cluster) start(n *node) {
	c.t.Helper()
	var routes []string
	for _, o := range c.nodes {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", o.routePort))
	}
	opts := &server.Options{
		ServerName: n.name,
		Host:       "127.0.0.1",
		Port:       n.clientPort,
		JetStream:  true,
		StoreDir:   n.storeDir,
		NoSigs:     true,
		MaxPayload: 1 << 20,
		Cluster:    server.ClusterOpts{Name: "tmc", Host: "127.0.0.1", Port: n.routePort},
		Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		c.t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		c.t.Fatalf("%s not ready", n.name)
	}
	n.srv = srv
}

func (c *cluster) waitMetaLeader() {
	c.t.Helper()
	eventually(c.t, 30*time.Second, "a JetStream meta leader known to every node", func() bool {
		leaders := 0
		for _, n := range c.nodes {
			if n.srv == nil || !n.srv.Running() {
				continue
			}
			if n.srv.JetStreamIsLeader() {
				leaders++
			}
			if !n.srv.JetStreamIsCurrent() {
				return false
			}
		}
		return leaders == 1
	})
}

// connect connects to node first, with every node's URL for reconnects.
func (c *cluster) connect(first int, name string) *nats.Conn {
	c.t.Helper()
	urls := []string{c.nodes[first].url()}
	for i, n := range c.nodes {
		if i != first {
			urls = append(urls, n.url())
		}
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.Name(name), nats.DontRandomize(),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	return nc
}

// A fleet of two workers on a three-node cluster, streams and bucket at
// three replicas, loses a node in the middle of a run of a few hundred
// requests: every request still ends with exactly one terminal event and
// one Talend execution, and nothing is left pending. The node then comes
// back and catches up.
func TestClusterLosesNodeLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("three-node cluster with a node failure: slow")
	}
	cl := startCluster(t, 3)
	sim, simURL := startSim(t, talendsim.Options{})
	cfg := workerConfig(t, simURL, map[string]string{"TMC_REPLICAS": "3"})
	topo := cfg.Worker.Topology()
	if topo.Replicas != 3 {
		t.Fatalf("topology replicas %d", topo.Replicas)
	}

	admin := cl.connect(0, "fleet-admin")
	adminJS, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	eventually(t, 30*time.Second, "provisioning at R3", func() bool {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		err := broker.Provision(pctx, adminJS, topo)
		if err != nil {
			t.Logf("provision: %v", err)
		}
		return err == nil
	})
	for _, name := range []string{topo.RunsStream, topo.TimersStream, topo.EventsStream, topo.DeadStream, "KV_" + topo.ClaimsBucket} {
		s, err := adminJS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("%s has %d replicas", name, r)
		}
	}

	// Two workers, on nodes 0 and 1; the one on node 1 loses its server.
	var logs [2]*testlog.Buffer
	for i := range logs {
		logs[i] = &testlog.Buffer{}
		wcfg := cfg
		wcfg.Worker.Provision = false
		startWorker(t, wcfg, cl.connect(i, fmt.Sprintf("worker-%d", i)), logs[i])
	}

	// The publisher is on node 0 and retries each request until JetStream
	// acknowledges it (the same Nats-Msg-Id: a retry after a lost ack is
	// de-duplicated), as a careful submitter does.
	pub := cl.connect(0, "publisher")
	pubJS, err := jetstream.New(pub)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	all := make([]string, n)
	for i := range all {
		all[i] = fmt.Sprintf("cl-%04d", i)
	}
	victim := cl.nodes[1]
	var wg sync.WaitGroup
	retries := make([]int, n)
	start := time.Now()
	sem := make(chan struct{}, 16)
	for i, id := range all {
		if i == n/3 {
			// Mid-run, with the workers busy: the node of worker 1 goes
			// away.
			eventually(t, 20*time.Second, "the workers at work", func() bool {
				s, err := adminJS.Stream(ctx, topo.EventsStream)
				return err == nil && s.CachedInfo().State.Msgs >= 30
			})
			t.Logf("shutting down %s after %d requests (%s)", victim.name, i, time.Since(start))
			victim.srv.Shutdown()
			victim.srv.WaitForShutdown()
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			msg := &nats.Msg{Subject: topo.RequestSubject("default"), Header: nats.Header{}, Data: requestBody(t, id, "task-"+id, nil)}
			msg.Header.Set(nats.MsgIdHdr, id)
			deadline := time.Now().Add(40 * time.Second)
			for {
				pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				_, err := pubJS.PublishMsg(pctx, msg)
				cancel()
				if err == nil {
					return
				}
				retries[i]++
				if time.Now().After(deadline) {
					t.Errorf("publish %s: %v", id, err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	total := 0
	for _, r := range retries {
		total += r
	}
	t.Logf("published %d requests in %s (%d publish retries)", n, time.Since(start), total)

	// Every request ends with exactly one terminal event.
	var last map[string]int
	eventually(t, 60*time.Second, "a terminal event for every request", func() bool {
		evs, err := tryReadEvents(adminJS, topo.EventsStream, "")
		if err != nil {
			t.Logf("reading events: %v", err)
			return false
		}
		done := 0
		last = map[string]int{}
		for _, id := range all {
			last[id] = terminals(evs[id])
			if last[id] > 0 {
				done++
			}
		}
		return done == n
	})
	evs := readEvents(t, adminJS, topo.EventsStream, "")
	stats := sim.Stats()
	for _, id := range all {
		if k := terminals(evs[id]); k != 1 {
			t.Errorf("%s: %d terminal events: %v", id, k, typesOf(evs[id]))
		}
		if e := evs[id]; len(e) > 0 && e[len(e)-1].Type != "accepted" {
			t.Errorf("%s: events %v, want accepted", id, typesOf(e))
		}
		if c := stats.Executions["task-"+id]; c != 1 {
			t.Errorf("%s: %d Talend executions, want 1", id, c)
		}
	}
	if stats.ExecutionsTotal != n {
		t.Errorf("simulator saw %d executions, want %d", stats.ExecutionsTotal, n)
	}

	// Nothing pending: the work queue is empty and nothing awaits an ack.
	eventually(t, 30*time.Second, "request stream drained", func() bool {
		s, err := adminJS.Stream(ctx, topo.RunsStream)
		if err != nil {
			return false
		}
		cons, err := adminJS.Consumer(ctx, topo.RunsStream, topo.Consumer)
		if err != nil {
			return false
		}
		info := cons.CachedInfo()
		return s.CachedInfo().State.Msgs == 0 && info.NumAckPending == 0 && info.NumPending == 0
	})
	if t.Failed() {
		for i, l := range logs {
			t.Logf("worker %d log tail:\n%s", i, l.Tail(30))
		}
		return
	}

	// The node comes back and catches up: every replica of every stream
	// current, the events stream with the same count on the returned node.
	cl.start(victim)
	cl.waitMetaLeader()
	eventsMsgs := func(js jetstream.JetStream) (uint64, error) {
		s, err := js.Stream(ctx, topo.EventsStream)
		if err != nil {
			return 0, err
		}
		return s.CachedInfo().State.Msgs, nil
	}
	want, err := eventsMsgs(adminJS)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, victim.name+" catching up", func() bool {
		for _, name := range []string{topo.RunsStream, topo.EventsStream, topo.DeadStream, topo.TimersStream, "KV_" + topo.ClaimsBucket} {
			s, err := adminJS.Stream(ctx, name)
			if err != nil {
				return false
			}
			ci := s.CachedInfo().Cluster
			if ci == nil || len(ci.Replicas) != 2 {
				return false
			}
			for _, r := range ci.Replicas {
				if !r.Current || r.Offline {
					return false
				}
			}
		}
		// The returned node's own copy, as its monitoring reports it.
		jsz, err := victim.srv.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
		if err != nil {
			return false
		}
		for _, acc := range jsz.AccountDetails {
			for _, sd := range acc.Streams {
				if sd.Name == topo.EventsStream {
					return sd.State.Msgs == want
				}
			}
		}
		return false
	})
}
