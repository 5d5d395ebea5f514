package state

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
)

// WatchFile loads a configuration file into the store and reloads it whenever it changes, until ctx ends.
// A file that fails to parse is reported and the store keeps its last good state; a resource that is
// invalid is refused and the rest applied. The first load's error is returned (the proxy should not start
// on a broken file); later ones are only logged, through onError as well when it is set.
func WatchFile(ctx context.Context, path string, st *Store, log logr.Logger, onError func(error)) error {
	if err := reload(path, st); err != nil {
		return err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch config file: %w", err)
	}
	// Watch the directory: editors and ConfigMap mounts replace files by renaming over them.
	if err := w.Add(filepath.Dir(path)); err != nil {
		_ = w.Close()
		return fmt.Errorf("watch config file directory: %w", err)
	}
	go func() {
		defer func() { _ = w.Close() }()
		var debounce <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Clean(ev.Name) == filepath.Clean(path) || filepath.Base(ev.Name) == "..data" {
					debounce = time.After(100 * time.Millisecond)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Error(err, "Watching the config file")
			case <-debounce:
				debounce = nil
				if err := reload(path, st); err != nil {
					log.Error(err, "Reloading the config file; keeping the last good configuration", "path", path)
					if onError != nil {
						onError(err)
					}
					continue
				}
				log.Info("Reloaded the config file", "path", path, "version", st.Load().Version())
			}
		}
	}()
	return nil
}

func reload(path string, st *Store) error {
	f, err := LoadFile(path)
	if err != nil {
		return err
	}
	return st.Replace(f.Resources)
}
