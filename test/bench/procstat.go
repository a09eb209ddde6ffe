package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// ProcStat is a process's memory and accumulated CPU time.
type ProcStat struct {
	// RSS and HWM are the resident set size now and at its peak, in bytes.
	RSS, HWM int64
	// CPU is user plus system time of the process itself.
	CPU time.Duration
	// ChildCPU is the same for its children that have exited and been
	// waited for (e.g. the nft processes the queuer starts).
	ChildCPU time.Duration
}

// ReadProcStat reads /proc/<pid>/status and /proc/<pid>/stat.
func ReadProcStat(pid int) (ProcStat, error) {
	var s ProcStat
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(status)))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch k {
		case "VmRSS":
			s.RSS = parseKB(v)
		case "VmHWM":
			s.HWM = parseKB(v)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	utime, stime, cutime, cstime, err := parseStatTimes(string(stat))
	if err != nil {
		return s, fmt.Errorf("pid %d: %w", pid, err)
	}
	tick := time.Second / clockTicks
	s.CPU = time.Duration(utime+stime) * tick
	s.ChildCPU = time.Duration(cutime+cstime) * tick
	return s, nil
}

// parseKB reads a "  1234 kB" value of /proc/<pid>/status as bytes.
func parseKB(v string) int64 {
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(f[0], 10, 64)
	return n * 1024
}

// parseStatTimes extracts utime, stime, cutime and cstime (fields 14-17)
// from /proc/<pid>/stat; the command name (field 2) may contain spaces, so
// fields are counted after its closing parenthesis.
func parseStatTimes(stat string) (utime, stime, cutime, cstime int64, err error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, 0, 0, fmt.Errorf("malformed /proc stat %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 15 {
		return 0, 0, 0, 0, fmt.Errorf("short /proc stat %q", stat)
	}
	var vals [4]int64
	for k := range vals {
		if vals[k], err = strconv.ParseInt(f[11+k], 10, 64); err != nil {
			return 0, 0, 0, 0, fmt.Errorf("/proc stat field %d: %w", 14+k, err)
		}
	}
	return vals[0], vals[1], vals[2], vals[3], nil
}

// Scrape fetches http://addr/metrics, dialling from inside the network
// namespace ns (the current one when ns is empty).
func Scrape(ns, addr string) (string, error) {
	return HTTPGet(ns, addr, "/metrics", 10*time.Second)
}

// HTTPGet fetches http://addr+path from inside ns (the current namespace
// when ns is empty) within timeout and fails unless the answer is 200.
func HTTPGet(ns, addr, path string, timeout time.Duration) (string, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			if ns == "" {
				return (&net.Dialer{}).DialContext(ctx, network, a)
			}
			var c net.Conn
			err := netsim.RunInNS(ns, func() (err error) {
				c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, a)
				return err
			})
			return c, err
		},
		DisableKeepAlives: true,
	}
	client := &http.Client{Transport: tr, Timeout: timeout}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return "", fmt.Errorf("get %s%s: %w", addr, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read %s%s: %w", addr, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("get %s%s: %s", addr, path, resp.Status)
	}
	return string(b), nil
}

// MetricValue returns the value of the first sample of the metric called
// name (with any labels) in Prometheus text format.
func MetricValue(text, name string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			return v, true
		}
	}
	return 0, false
}
