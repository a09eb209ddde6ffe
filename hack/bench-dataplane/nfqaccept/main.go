// Command nfqaccept reads NFQUEUE queues and accepts every packet at once.
// make bench-dataplane runs it behind the same hooks and xt NFQUEUE rule as
// Tollgate's queuer, to measure what queueing alone costs: the physical
// limit of an enforcer that asks userspace about the first packet of each
// connection. It reads queues as the queuer does (one netlink socket and
// reading goroutine per queue, 256 bytes copied, GSO and fail-open flags)
// but answers inline, since it has nothing to wait for.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func main() {
	first := flag.Uint("first", 100, "first queue number")
	count := flag.Uint("count", 1, "number of queues")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	n, err := run(ctx, uint16(*first), uint16(*count))
	if err != nil {
		fmt.Fprintln(os.Stderr, "nfqaccept:", err)
		os.Exit(1)
	}
	slog.Info("nfqaccept done", "accepted", n)
}

// run accepts packets on queues first..first+count-1 until ctx ends and
// returns how many it accepted.
func run(ctx context.Context, first, count uint16) (uint64, error) {
	if count == 0 {
		return 0, errors.New("--count must be at least 1")
	}
	var accepted atomic.Uint64
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	for q := first; q < first+count; q++ {
		nf, err := nfqueue.Open(&nfqueue.Config{
			NfQueue:      q,
			MaxQueueLen:  1024,
			MaxPacketLen: 256,
			Copymode:     nfqueue.NfQnlCopyPacket,
			Flags:        nfqueue.NfQaCfgFlagGSO | nfqueue.NfQaCfgFlagFailOpen,
		})
		if err != nil {
			return 0, fmt.Errorf("open queue %d: %w", q, err)
		}
		defer nf.Close()
		_ = nf.SetOption(netlink.NoENOBUFS, true)
		hook := func(a nfqueue.Attribute) int {
			if a.PacketID == nil {
				return 0
			}
			if err := nf.SetVerdict(*a.PacketID, nfqueue.NfAccept); err != nil {
				slog.Warn("set verdict", "queue", q, "err", err)
			}
			accepted.Add(1)
			return 0
		}
		onErr := func(err error) int {
			if ctx.Err() != nil {
				return 1
			}
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, os.ErrDeadlineExceeded) {
				return 0
			}
			cancel(fmt.Errorf("queue %d: %w", q, err))
			return 1
		}
		if err := nf.RegisterWithErrorFunc(ctx, hook, onErr); err != nil {
			return 0, fmt.Errorf("register queue %d: %w", q, err)
		}
	}
	slog.Info("nfqaccept running", "first", first, "count", count)
	<-ctx.Done()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return accepted.Load(), err
	}
	return accepted.Load(), nil
}
