package integration

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tollgate/tollgate/internal/proc"
	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
	"github.com/tollgate/tollgate/test/netsim"
)

// slowDecider selects y/b and answers every query ALLOW after a delay, so
// that a burst of new connections overflows a short queue.
type slowDecider struct {
	tollgatev1.UnimplementedDeciderServiceServer
	delay   time.Duration
	queries atomic.Int64
}

func (d *slowDecider) Watch(_ *tollgatev1.WatchRequest, s tollgatev1.DeciderService_WatchServer) error {
	if err := s.Send(&tollgatev1.WatchResponse{Generation: 1, SelectedIpv4: [][]byte{{10, 99, 1, 2}}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (d *slowDecider) DecideStream(s tollgatev1.DeciderService_DecideStreamServer) error {
	for {
		req, err := s.Recv()
		if err != nil {
			return nil
		}
		time.Sleep(d.delay)
		resp := &tollgatev1.DecideStreamResponse{}
		for _, q := range req.GetQueries() {
			d.queries.Add(1)
			resp.Results = append(resp.Results, &tollgatev1.Result{Id: q.GetId(), Verdict: tollgatev1.Verdict_VERDICT_ALLOW, Generation: 1})
		}
		if err := s.Send(resp); err != nil {
			return err
		}
	}
}

// TestQueueOverflow fires a burst of new connections at a selected pod while
// the decider is slow and the queue holds 2 packets: the queuer stays up,
// the kernel drops what does not fit and counts it, in both fail modes (a
// busy queuer is not an absent one), and afterwards connections work again.
func TestQueueOverflow(t *testing.T) {
	for _, failOpen := range []bool{true, false} {
		t.Run(fmt.Sprintf("fail-open=%v", failOpen), func(t *testing.T) {
			n := newNode(t)
			lis, err := net.Listen("unix", n.socket)
			if err != nil {
				t.Fatal(err)
			}
			g := grpc.NewServer()
			fake := &slowDecider{delay: 300 * time.Millisecond}
			tollgatev1.RegisterDeciderServiceServer(g, fake)
			go func() { _ = g.Serve(lis) }()
			t.Cleanup(g.Stop)

			n.queuer = proc.ForTest(n.t, "queuer", exec.Command("ip", "netns", "exec", n.node.Netns(), filepath.Join(binDir, "queuer"),
				"--decider-socket", n.socket, "--node-name", "node-1", "--queues", "1", "--queue-maxlen", "2", "--queue-workers", "1",
				"--fail-open="+strconv.FormatBool(failOpen), "--decide-timeout", "2s", "--cache-size", "16", "--metrics-bind-address", ""))
			n.eventually("y/b selected", 20*time.Second, func() bool { return n.selected("10.99.1.2") })

			var ok, failed atomic.Int64
			var wg sync.WaitGroup
			for i := range 60 {
				from := []string{"a", "c"}[i%2]
				wg.Go(func() {
					// Distinct ports: distinct tuples, so no cache hit.
					if reached, _ := netsim.Probe(n.pods[from], n.pods["b"].IPv4, 80+uint16(i%2), netsim.TCP, 2*time.Second); reached {
						ok.Add(1)
					} else {
						failed.Add(1)
					}
				})
			}
			wg.Wait()
			t.Logf("burst: %d connected, %d failed, %d queries reached the decider", ok.Load(), failed.Load(), fake.queries.Load())
			if n.queuer.Exited() {
				t.Fatal("the queuer exited during the burst")
			}
			out, _ := netsim.Exec(n.node.Netns(), "cat", "/proc/net/netfilter/nfnetlink_queue")
			t.Logf("nfnetlink_queue: %s", strings.TrimSpace(out))
			if f := strings.Fields(out); len(f) < 6 || f[5] == "0" {
				t.Errorf("the kernel counted no queue drops (%q)", out)
			}
			// The queuer still answers afterwards.
			n.eventually("a connection after the burst", 10*time.Second, func() bool {
				reached, _ := netsim.Probe(n.pods["a"], n.pods["b"].IPv4, 81, netsim.TCP, time.Second)
				return reached
			})
		})
	}
}
