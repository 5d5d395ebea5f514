// Command bundle writes the OLM bundle (bundle/ and bundle.Dockerfile) from `kustomize build
// config/manifests`. The output depends only on config/ and the flags, so `make verify` can regenerate it
// and fail on a difference.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ambient-dev/ambient-operator/hack/release/internal/bundle"
	"github.com/ambient-dev/ambient-operator/hack/release/internal/kustomize"
)

func main() {
	var (
		config, out, icon, channels, related string
		opts                                 bundle.Options
	)
	flag.StringVar(&config, "config", "config/manifests", "Kustomization of everything the bundle holds.")
	flag.StringVar(&out, "out", "bundle", "Bundle directory; bundle.Dockerfile goes beside it.")
	flag.StringVar(&icon, "icon", "config/manifests/bases/icon.svg", "SVG icon of the operator.")
	flag.StringVar(&opts.Package, "package", "ambient-operator", "OLM package name.")
	flag.StringVar(&opts.Version, "version", "", "Operator version (semantic version, no leading v).")
	flag.StringVar(&opts.OperatorImage, "image", "", "Operator image; empty keeps the image of config/manager.")
	flag.StringVar(&related, "related-images", "", "Other images the operator runs, name=image,...")
	flag.Func("manager-arg", "Argument appended to the manager container's (repeatable).", func(s string) error {
		opts.ManagerArgs = append(opts.ManagerArgs, s)
		return nil
	})
	flag.StringVar(&channels, "channels", "candidate", "Channels of the bundle, comma-separated.")
	flag.StringVar(&opts.DefaultChannel, "default-channel", "candidate", "Default channel of the package.")
	flag.StringVar(&opts.Replaces, "replaces", "", "Name of the CSV this version upgrades from, if any.")
	flag.Parse()

	opts.Channels = strings.Split(channels, ",")
	opts.RelatedImages = map[string]string{}
	for _, kv := range strings.Split(related, ",") {
		if kv == "" {
			continue
		}
		name, image, ok := strings.Cut(kv, "=")
		if !ok || name == "" || image == "" {
			fail(fmt.Errorf("--related-images: %q is not name=image", kv))
		}
		opts.RelatedImages[name] = image
	}
	var err error
	if opts.IconSVG, err = os.ReadFile(icon); err != nil {
		fail(err)
	}
	objs, err := kustomize.Objects(config)
	if err != nil {
		fail(err)
	}
	files, err := bundle.Generate(objs, opts)
	if err != nil {
		fail(err)
	}
	// Start from an empty bundle so that an object removed from config/ disappears from it too.
	for _, sub := range []string{"manifests", "metadata", "tests"} {
		if err := os.RemoveAll(filepath.Join(out, sub)); err != nil {
			fail(err)
		}
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := filepath.Join(out, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			fail(err)
		}
		if err := os.WriteFile(p, files[name], 0o644); err != nil {
			fail(err)
		}
	}
	fmt.Printf("Wrote the bundle of %s v%s to %s/ (%d files)\n", opts.Package, opts.Version, out, len(names))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bundle:", err)
	os.Exit(1)
}
