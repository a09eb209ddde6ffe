package source

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tollgate/tollgate/decider/engine"
)

// Once lists the objects once, the way Run watches them (the same
// discovery, access checks, informers and transforms), and returns them
// when the initial sync completes, stopping the informers. It is for
// one-shot tools; Run must not be called on k before or after. It fails if
// ctx ends first.
func (k *Kube) Once(ctx context.Context) (engine.Input, error) {
	ctx, cancel := context.WithCancel(ctx)
	synced := make(chan struct{}, 1)
	ran := make(chan error, 1)
	go func() {
		ran <- k.Run(ctx, func() {
			k.mu.Lock()
			done := k.synced
			k.mu.Unlock()
			if done {
				select {
				case synced <- struct{}{}:
				default:
				}
			}
		})
	}()
	var in engine.Input
	var err error
	select {
	case <-synced:
		in = k.Input()
	case err = <-ran:
		if err == nil {
			err = ctx.Err()
		}
	case <-ctx.Done():
		err = ctx.Err()
	}
	cancel()
	if runErr := <-ran; err == nil && runErr != nil && !errors.Is(runErr, context.Canceled) {
		err = runErr
	}
	if err != nil {
		return engine.Input{}, fmt.Errorf("list from the API server: %w", err)
	}
	return in, nil
}

// LoadPath reads manifests from path: a directory as LoadDir reads it, or
// one file of any name (read as JSON when its name ends in .json, as YAML
// otherwise).
func LoadPath(path string) (engine.Input, []Warning, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return engine.Input{}, nil, fmt.Errorf("read manifests: %w", err)
	}
	if fi.IsDir() {
		return LoadDir(path)
	}
	return LoadFiles(path)
}

// LoadFiles reads the named files as one set of manifests, in the order
// given (a later object replaces an earlier one of the same kind,
// namespace and name, with a warning).
func LoadFiles(paths ...string) (engine.Input, []Warning, error) {
	files := make([]manifestFile, 0, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return engine.Input{}, nil, fmt.Errorf("read manifest: %w", err)
		}
		files = append(files, manifestFile{path: filepath.Clean(p), data: data})
	}
	return parseFiles(files)
}

// LoadBytes reads manifests held in memory (standard input, for example).
// name stands for the file in messages and, like a path, says whether the
// data is JSON (a name ending in .json) or YAML.
func LoadBytes(name string, data []byte) (engine.Input, []Warning, error) {
	return parseFiles([]manifestFile{{path: name, data: data}})
}
