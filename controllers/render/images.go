package render

import (
	"fmt"
	"regexp"
	"strings"
)

// SupportedMinors are the data-plane minor versions this operator knows how to run; for them it derives
// the image from the version. Any other version needs spec.image.
var SupportedMinors = []string{"0.1"}

var semver = regexp.MustCompile(`^([0-9]+)\.([0-9]+)\.([0-9]+)(-[0-9A-Za-z.-]+)?$`)

// Component is what one mesh component runs: a version and its image.
type Component struct {
	Version string
	Image   string
}

// ResolveImage returns the image of a data-plane version: override when set, else the image in registry
// for a supported version. The error says what to do about an unsupported version.
func ResolveImage(registry, version, override string) (string, error) {
	if override != "" {
		return override, nil
	}
	v := NormalizeVersion(version)
	m := semver.FindStringSubmatch(v)
	if m == nil {
		return "", fmt.Errorf("spec.version %q is not a semantic version", version)
	}
	minor := m[1] + "." + m[2]
	for _, s := range SupportedMinors {
		if s == minor {
			return fmt.Sprintf("%s/ambient-dataplane:v%s", strings.TrimSuffix(registry, "/"), v), nil
		}
	}
	return "", fmt.Errorf("spec.version %q is not supported by this operator (supported: %s.x); set spec.image to run it anyway",
		version, strings.Join(SupportedMinors, ".x, "))
}
