package redirect

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Installer puts the plugin on a node: the binary into the CNI bin directory under PluginName, and an
// entry at the end of the plugin chain of the network configuration the runtime uses (the first .conflist
// or .conf of the configuration directory, in lexical order, as kubelet's runtimes pick it).
type Installer struct {
	BinDir, ConfDir string
	// Binary is the executable to install (the running ambient-dataplane).
	Binary      string
	AgentSocket string
	LogFile     string
}

// Install installs or refreshes the binary and the configuration entry. It reports whether the
// configuration changed.
func (in Installer) Install() (bool, error) {
	if err := in.installBinary(); err != nil {
		return false, err
	}
	path, conf, err := in.networkConfig()
	if err != nil {
		return false, err
	}
	plugins, _ := conf["plugins"].([]any)
	entry := map[string]any{"type": PluginName, "agentSocket": in.AgentSocket}
	if in.LogFile != "" {
		entry["logFile"] = in.LogFile
	}
	kept := make([]any, 0, len(plugins)+1)
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == PluginName {
			if equalJSON(m, entry) && len(kept) == len(plugins)-1 {
				return false, nil // already last and current
			}
			continue
		}
		kept = append(kept, p)
	}
	conf["plugins"] = append(kept, entry)
	return true, writeJSON(path, conf)
}

// Uninstall removes the configuration entry and the binary.
func (in Installer) Uninstall() error {
	path, conf, err := in.networkConfig()
	if err == nil {
		plugins, _ := conf["plugins"].([]any)
		kept := make([]any, 0, len(plugins))
		for _, p := range plugins {
			if m, ok := p.(map[string]any); ok && m["type"] == PluginName {
				continue
			}
			kept = append(kept, p)
		}
		if len(kept) != len(plugins) {
			conf["plugins"] = kept
			if err := writeJSON(path, conf); err != nil {
				return err
			}
		}
	}
	if err := os.Remove(filepath.Join(in.BinDir, PluginName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the plugin binary: %w", err)
	}
	return nil
}

// networkConfig finds the runtime's network configuration and returns it as a configuration list
// (a single-plugin .conf becomes a .conflist, which replaces it).
func (in Installer) networkConfig() (string, map[string]any, error) {
	entries, err := os.ReadDir(in.ConfDir)
	if err != nil {
		return "", nil, fmt.Errorf("read the CNI configuration directory: %w", err)
	}
	var names []string
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".conflist" || ext == ".conf" || ext == ".json") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", nil, fmt.Errorf("no CNI network configuration in %s yet: the network plugin must be installed first", in.ConfDir)
	}
	sort.Strings(names)
	path := filepath.Join(in.ConfDir, names[0])
	data, err := os.ReadFile(path) // #nosec G304 -- the runtime's configuration
	if err != nil {
		return "", nil, fmt.Errorf("read %s: %w", path, err)
	}
	conf := map[string]any{}
	if err := json.Unmarshal(data, &conf); err != nil {
		return "", nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if _, ok := conf["plugins"]; ok {
		return path, conf, nil
	}
	// A single plugin: wrap it in a list and replace the .conf with a .conflist.
	list := map[string]any{"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": []any{conf}}
	newPath := strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	if err := writeJSON(newPath, list); err != nil {
		return "", nil, err
	}
	if err := os.Remove(path); err != nil {
		return "", nil, fmt.Errorf("replace %s with %s: %w", path, newPath, err)
	}
	return newPath, list, nil
}

func (in Installer) installBinary() error {
	if err := os.MkdirAll(in.BinDir, 0o750); err != nil {
		return fmt.Errorf("create the CNI bin directory: %w", err)
	}
	src, err := os.Open(in.Binary)
	if err != nil {
		return fmt.Errorf("open own binary: %w", err)
	}
	defer func() { _ = src.Close() }()
	dst := filepath.Join(in.BinDir, PluginName)
	tmp, err := os.CreateTemp(in.BinDir, "."+PluginName+"-")
	if err != nil {
		return fmt.Errorf("install the plugin binary: %w", err)
	}
	if _, err := io.Copy(tmp, src); err != nil {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("install the plugin binary: %w", err)
	}
	if err := tmp.Chmod(0o755); err != nil { // #nosec G302 -- the runtime executes it
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("install the plugin binary: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("install the plugin binary: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("install the plugin binary: %w", err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func equalJSON(a, b map[string]any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
