package bench

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDialTCP4 needs no namespace: it dials loopback from the test's own.
func TestDialTCP4(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("srv\n"))
			c.Close()
		}
	}()
	addr := netip.MustParseAddrPort(l.Addr().String())
	took, err := DialTCP4(addr, 2*time.Second, true)
	if err != nil {
		t.Fatalf("dial a listening port: %v", err)
	}
	if took <= 0 || took > 2*time.Second {
		t.Errorf("connect took %v", took)
	}
	l2, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(l2.Addr().String())
	l2.Close()
	if _, err := DialTCP4(closed, 2*time.Second, false); !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("dial a closed port: err = %v, want connection refused", err)
	}
}
