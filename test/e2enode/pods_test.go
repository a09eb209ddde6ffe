package e2enode

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tollgate/tollgate/test/localcluster"
	pm "github.com/tollgate/tollgate/test/policymodel"
)

// testPod is one pod of the model, running netserver.
type testPod struct {
	key  string // "ns/name"
	node string
	ip   netip.Addr
}

// nodeOf places pods a and b on the first node and c on the second, as
// test/conformance does: every table has same-node and cross-node cells.
func nodeOf(name string) string {
	if name == "c" {
		return localcluster.NodeName(2)
	}
	return localcluster.NodeName(1)
}

// servedPorts are the ports every test pod serves TCP, UDP and SCTP on.
var servedPorts = []int32{80, 81}

// createPods creates namespaces x, y, z and pods a, b, c in each (pinned to
// their nodes) and waits until they run.
func (e *env) createPods(ctx context.Context) error {
	client := e.cluster.Client()
	for _, ns := range pm.Namespaces {
		obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": ns}}}
		if _, err := client.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
		for _, name := range pm.PodNames {
			if err := e.createPod(ctx, ns, name); err != nil {
				return err
			}
		}
	}
	return waitFor(ctx, 3*time.Minute, time.Second, func() (bool, error) {
		for _, key := range pm.PodKeys() {
			pod, err := client.CoreV1().Pods(pm.NS(key)).Get(ctx, pm.Name(key), metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			ready := false
			for _, c := range pod.Status.Conditions {
				ready = ready || c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue
			}
			ip, err := netip.ParseAddr(pod.Status.PodIP)
			if !ready || err != nil {
				return false, fmt.Errorf("pod %s not ready yet (phase %s)", key, pod.Status.Phase)
			}
			e.pods[key] = &testPod{key: key, node: pod.Spec.NodeName, ip: ip}
		}
		return true, nil
	})
}

// createPod creates one netserver pod, retrying while the namespace's
// default ServiceAccount does not exist yet.
func (e *env) createPod(ctx context.Context, ns, name string) error {
	var ports []corev1.ContainerPort
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
		for _, port := range servedPorts {
			ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))), ContainerPort: port, Protocol: proto})
		}
	}
	grace := int64(2)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": nodeOf(name)},
			AutomountServiceAccountToken:  new(bool),
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "netserver",
				Image:           e.images.server,
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"serve", "--name=" + ns + "/" + name, "--ports=80,81"},
				Ports:           ports,
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}},
					PeriodSeconds: 2,
				},
			}},
		},
	}
	return waitFor(ctx, time.Minute, 500*time.Millisecond, func() (bool, error) {
		_, err := e.cluster.Client().CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return true, nil
		}
		if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "serviceaccount") {
			return false, err // the ServiceAccount controller has not got there yet
		}
		return false, fmt.Errorf("create pod %s/%s: %w", ns, name, err)
	})
}

// deletePods deletes the model's namespaces and waits until they are gone.
func (e *env) deletePods() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	for _, ns := range pm.Namespaces {
		err := e.cluster.Client().CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, waitFor(ctx, 2*time.Minute, time.Second, func() (bool, error) {
		for _, ns := range pm.Namespaces {
			if _, err := e.cluster.Client().CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, err
			}
		}
		return true, nil
	}))
	return errors.Join(errs...)
}

// describePods is kubectl's view of the test pods, for setup failures.
func (e *env) describePods() string {
	out, _ := e.cluster.Kubectl("get", "pods", "-A", "-o", "wide")
	events, _ := e.cluster.Kubectl("get", "events", "-A", "--sort-by=.lastTimestamp")
	return out + "\n" + tailLines(events, 40)
}

// probeResult is what `netserver probe` prints for one target.
type probeResult struct {
	Target    string `json:"target"`
	Reachable bool   `json:"reachable"`
	Server    string `json:"server"`
	Reason    string `json:"reason"`
}

// probeTimeout is how long one probe waits for an answer.
const probeTimeout = time.Second

// probeFrom runs netserver's probe inside pod from (kubectl exec) against
// every target address, all at once; targets are PROTO/IP/PORT.
func (e *env) probeFrom(from string, targets []string) (map[string]probeResult, error) {
	args := append([]string{"exec", "-n", pm.NS(from), pm.Name(from), "-c", "netserver", "--",
		"/netserver", "probe", "--timeout", probeTimeout.String()}, targets...)
	out, err := e.cluster.Kubectl(args...)
	if err != nil {
		return nil, err
	}
	results := map[string]probeResult{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r probeResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, fmt.Errorf("probe output of %s: %w: %q", from, err, line)
		}
		results[r.Target] = r
	}
	if len(results) != len(targets) {
		return nil, fmt.Errorf("probe from %s: %d results for %d targets:\n%s", from, len(results), len(targets), out)
	}
	return results, nil
}

// probeTarget is a probe target in netserver's notation.
func probeTarget(proto string, ip netip.Addr, port uint16) string {
	return fmt.Sprintf("%s/%s/%d", proto, ip, port)
}

// probeAll probes every ordered pod pair on each target, one kubectl exec
// per source pod, and returns the observed reachability. A probe that
// reaches the wrong server counts as unreachable.
func (e *env) probeAll(targets []pm.Target) (map[pm.Cell]bool, error) {
	out := map[pm.Cell]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, from := range pm.PodKeys() {
		wg.Go(func() {
			var list []string
			want := map[string]pm.Cell{}
			for _, t := range targets {
				for _, to := range pm.PodKeys() {
					tg := probeTarget(string(t.Proto), e.pods[to].ip, t.Port)
					list = append(list, tg)
					want[tg] = pm.Cell{From: from, To: to, T: t}
				}
			}
			results, err := e.probeFrom(from, list)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			for tg, c := range want {
				r := results[tg]
				// SCTP answers carry no name.
				out[c] = r.Reachable && (r.Server == "" || r.Server == c.To)
			}
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
