// Command bundle-validate loads an OLM bundle directory and runs operator-framework's validators on it:
// the default bundle validators (CSV, CRDs, bundle) and the optional OperatorHub, standard capabilities
// and categories, good practices, object and deprecated-API suites, the last with the CSV's
// minKubeVersion as the Kubernetes version. It prints every finding and exits non-zero on any error or
// warning.
//
// The deprecated "operatorhub" validator always warns that it is deprecated; its documented replacement,
// operatorhub/v2 with standardcapabilities and standardcategories, runs the same checks.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/validation"
	"github.com/operator-framework/api/pkg/validation/errors"
)

func main() {
	dir := flag.String("bundle", "bundle", "Bundle directory (manifests/ and metadata/).")
	flag.Parse()

	bundle, err := manifests.GetBundleFromDir(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bundle-validate: load %s: %v\n", *dir, err)
		os.Exit(1)
	}
	if bundle.CSV == nil {
		fmt.Fprintf(os.Stderr, "bundle-validate: %s has no ClusterServiceVersion\n", *dir)
		os.Exit(1)
	}
	k8sVersion := bundle.CSV.Spec.MinKubeVersion
	validators := validation.DefaultBundleValidators.WithValidators(
		validation.OperatorHubV2Validator,
		validation.StandardCapabilitiesValidator,
		validation.StandardCategoriesValidator,
		validation.GoodPracticesValidator,
		validation.ObjectValidator,
		validation.AlphaDeprecatedAPIsValidator,
	)
	objs := append(bundle.ObjectsToValidate(), map[string]string{"k8s-version": k8sVersion})
	results := validators.Validate(objs...)

	nErr, nWarn := 0, 0
	for _, r := range results {
		for _, e := range r.Errors {
			nErr++
			report("ERROR", r, e)
		}
		for _, w := range r.Warnings {
			nWarn++
			report("WARNING", r, w)
		}
	}
	fmt.Printf("Validated bundle %s (channels %v, minKubeVersion %s) with %d validators: %d errors, %d warnings\n",
		bundle.CSV.Name, bundle.Channels, k8sVersion, len(validators), nErr, nWarn)
	if nErr+nWarn > 0 {
		os.Exit(1)
	}
}

func report(level string, r errors.ManifestResult, e errors.Error) {
	fmt.Printf("%s [%s] %s\n", level, r.Name, e.Error())
}
