package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tollgate/tollgate/test/netsim"
)

// ErrTimeout is returned by DialTCP4 when no answer came in time: the SYN
// (or the reply) was dropped.
var ErrTimeout = errors.New("timeout")

// DialTCP4 opens one TCP connection to dst from the calling thread's network
// namespace, on a raw non-blocking socket, and returns how long connect
// took: from the SYN leaving to the SYN-ACK being processed. With
// readReply it then reads until the server closes (netsim servers send one
// line). The connection is reset before it returns. Call it on a thread
// inside the namespace (InNamespace).
func DialTCP4(dst netip.AddrPort, timeout time.Duration, readReply bool) (time.Duration, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	// Close with a reset: no TIME_WAIT on either side, so that ports and
	// conntrack entries do not pile up at thousands of connections a second.
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		return 0, fmt.Errorf("SO_LINGER: %w", err)
	}
	deadline := time.Now().Add(timeout)
	start := time.Now()
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return time.Since(start), fmt.Errorf("connect %s: %w", dst, err)
	}
	if err != nil {
		if err := waitFD(fd, unix.POLLOUT, deadline); err != nil {
			return time.Since(start), err
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return time.Since(start), fmt.Errorf("connect %s: SO_ERROR: %w", dst, err)
		}
		if soErr != 0 {
			return time.Since(start), fmt.Errorf("connect %s: %w", dst, unix.Errno(soErr))
		}
	}
	took := time.Since(start)
	if !readReply {
		return took, nil
	}
	var buf [128]byte
	for range 64 { // a netsim reply is one short line; bounded anyway
		if err := waitFD(fd, unix.POLLIN, deadline); err != nil {
			return took, fmt.Errorf("read reply from %s: %w", dst, err)
		}
		n, err := unix.Read(fd, buf[:])
		switch {
		case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return took, fmt.Errorf("read reply from %s: %w", dst, err)
		case n == 0:
			return took, nil
		}
	}
	return took, fmt.Errorf("read reply from %s: no end", dst)
}

// waitFD polls fd for events until deadline; POLLERR and POLLHUP count as
// ready (the caller's next call reports them).
func waitFD(fd int, events int16, deadline time.Time) error {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return ErrTimeout
		}
		ms := int(left.Milliseconds())
		if left > time.Duration(ms)*time.Millisecond {
			ms++
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n > 0 {
			return nil
		}
	}
}

// InNamespace runs fn on n goroutines, each locked to an OS thread inside
// network namespace ns for as long as fn runs, and waits for all of them.
// It returns their errors joined.
func InNamespace(ns string, n int, fn func(worker int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for w := range n {
		wg.Go(func() {
			errs[w] = netsim.RunInNS(ns, func() error { return fn(w) })
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
