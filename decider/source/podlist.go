package source

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// A pod list is the largest thing the decider ever receives: 100,000 pods
// are about 270 MB of protobuf, and decoded at once about 470 MB more,
// against some 200 MB for the stripped pods the informer keeps. An
// informer lists that way whenever the API server cannot stream the
// initial state (the watch-list feature needs etcd's progress requests;
// without them, and on older clusters, the reflector falls back to one
// list from the API server's cache, which does not paginate). So the pod
// informer's list reads the protobuf response as it arrives and strips
// each pod before it decodes the next: the start-up peak is then the
// stripped pods, not three copies of them.

// protobufMagic starts every protobuf-encoded Kubernetes object.
var protobufMagic = []byte{0x6b, 0x38, 0x73, 0x00}

// maxListItem bounds one encoded pod in a streamed list (the API server
// refuses objects above about 1.5 MB; this leaves room).
const maxListItem = 16 << 20

// podListWatch is the pod informer's ListerWatcher: lists stream through
// listPods, watches are the client's.
func podListWatch(kc kubernetes.Interface) cache.ListerWatcher {
	pods := kc.CoreV1().Pods(metav1.NamespaceAll)
	rc, _ := kc.CoreV1().RESTClient().(*rest.RESTClient)
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			if rc == nil { // fake clientsets have no REST client
				l, err := pods.List(ctx, opts)
				if err != nil {
					return nil, err
				}
				return stripPodList(l), nil
			}
			return listPods(ctx, rc, opts)
		},
		WatchFuncWithContext: pods.Watch,
	}, kc)
}

// listPods lists pods as opts say, stripping each (transformPod) as it is
// read. A protobuf answer becomes a metav1.List of the stripped pods (the
// reflector takes any list; a PodList would hold each pod twice more, in
// its item array and in the reflector's copies of the items). An answer
// that is not protobuf is decoded whole, then stripped.
func listPods(ctx context.Context, rc *rest.RESTClient, opts metav1.ListOptions) (runtime.Object, error) {
	body, err := rc.Get().Resource("pods").VersionedParams(&opts, scheme.ParameterCodec).Stream(ctx)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	r := bufio.NewReaderSize(body, 64<<10)
	if magic, err := r.Peek(len(protobufMagic)); err != nil || !bytes.Equal(magic, protobufMagic) {
		b, err := io.ReadAll(r)
		if err != nil {
			return nil, fmt.Errorf("list pods: %w", err)
		}
		l := &corev1.PodList{}
		if err := runtime.DecodeInto(scheme.Codecs.UniversalDecoder(corev1.SchemeGroupVersion), b, l); err != nil {
			return nil, fmt.Errorf("list pods: %w", err)
		}
		return stripPodList(l), nil
	}
	l, err := decodePodList(r)
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	return l, nil
}

// stripPodList strips every pod of l in place.
func stripPodList(l *corev1.PodList) *corev1.PodList {
	for i := range l.Items {
		if p, ok := mustTransform(transformPod, &l.Items[i]).(*corev1.Pod); ok {
			l.Items[i] = *p
		}
	}
	return l
}

// decodePodList reads a protobuf-encoded PodList (the magic, then a
// runtime.Unknown whose raw field holds the list) from r, stripping each
// pod as soon as it is decoded.
func decodePodList(r *bufio.Reader) (*metav1.List, error) {
	if _, err := r.Discard(len(protobufMagic)); err != nil {
		return nil, err
	}
	var list *metav1.List
	var buf []byte
	for {
		field, wire, err := readKey(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch {
		case field == 2 && wire == 2: // Unknown.raw: the PodList
			n, err := binary.ReadUvarint(r)
			if err != nil {
				return nil, err
			}
			lr := &io.LimitedReader{R: r, N: int64(n)}
			if list, err = decodePodListBody(lr, &buf); err != nil {
				return nil, err
			}
			if lr.N != 0 { // the answer ended inside the list
				return nil, io.ErrUnexpectedEOF
			}
		case field == 3 && wire == 2: // Unknown.contentEncoding
			b, err := readBytes(r, &buf)
			if err != nil {
				return nil, err
			}
			if len(b) > 0 {
				return nil, fmt.Errorf("unsupported content encoding %q", b)
			}
		default: // typeMeta, contentType
			if err := skipField(r, wire); err != nil {
				return nil, err
			}
		}
	}
	if list == nil {
		return nil, errors.New("no list in the answer")
	}
	return list, nil
}

// decodePodListBody reads the fields of a PodList from r until it ends:
// metadata (1) and items (2), each item decoded and stripped on its own.
func decodePodListBody(lr io.Reader, buf *[]byte) (*metav1.List, error) {
	r := bufio.NewReaderSize(lr, 4<<10)
	l := &metav1.List{TypeMeta: metav1.TypeMeta{Kind: "List", APIVersion: "v1"}}
	for {
		field, wire, err := readKey(r)
		if errors.Is(err, io.EOF) {
			return l, nil
		}
		if err != nil {
			return nil, err
		}
		if wire != 2 || (field != 1 && field != 2) {
			if err := skipField(r, wire); err != nil {
				return nil, err
			}
			continue
		}
		b, err := readBytes(r, buf)
		if err != nil {
			return nil, err
		}
		if field == 1 {
			if err := l.ListMeta.Unmarshal(b); err != nil {
				return nil, fmt.Errorf("list metadata: %w", err)
			}
			continue
		}
		var p corev1.Pod
		if err := p.Unmarshal(b); err != nil {
			return nil, fmt.Errorf("pod %d of the list: %w", len(l.Items), err)
		}
		l.Items = append(l.Items, runtime.RawExtension{Object: mustTransform(transformPod, &p).(runtime.Object)})
	}
}

// mustTransform applies a transform that cannot fail (ours never do).
func mustTransform(f cache.TransformFunc, obj any) any {
	out, err := f(obj)
	if err != nil {
		return obj
	}
	return out
}

// readKey reads a protobuf field key. io.EOF means the message ended
// cleanly, before a key.
func readKey(r *bufio.Reader) (field uint64, wire byte, err error) {
	k, err := binary.ReadUvarint(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, 0, io.EOF
		}
		return 0, 0, err
	}
	return k >> 3, byte(k & 7), nil
}

// readBytes reads a length-delimited field's bytes into *buf (grown as
// needed, reused between calls) and returns them.
func readBytes(r *bufio.Reader, buf *[]byte) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, unexpected(err)
	}
	if n > maxListItem {
		return nil, fmt.Errorf("a list item of %d bytes", n)
	}
	if uint64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, unexpected(err)
	}
	return b, nil
}

// skipField skips a field of the given wire type.
func skipField(r *bufio.Reader, wire byte) error {
	var n uint64
	switch wire {
	case 0:
		_, err := binary.ReadUvarint(r)
		return unexpected(err)
	case 1:
		n = 8
	case 2:
		var err error
		if n, err = binary.ReadUvarint(r); err != nil {
			return unexpected(err)
		}
	case 5:
		n = 4
	default:
		return fmt.Errorf("protobuf wire type %d", wire)
	}
	_, err := r.Discard(int(n))
	return unexpected(err)
}

// unexpected turns an end of input inside a field into an error.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
