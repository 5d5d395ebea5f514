package ambientmesh

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	ambientv1alpha1 "github.com/ambient-dev/ambient-operator/api/v1alpha1"
	"github.com/ambient-dev/ambient-operator/controllers/render"
)

// defaultRootTTL is the lifetime of a generated root: ten years.
const defaultRootTTL = 87600 * time.Hour

// ensureCARoot returns the Secret with the CA root and its public certificate. A user's Secret
// (spec.certificates.rootSecretName) is used as it is; otherwise the operator generates a root once and
// never overwrites it, so that workload certificates stay valid across operator restarts and upgrades.
func (r *Reconciler) ensureCARoot(ctx context.Context, mesh *ambientv1alpha1.AmbientMesh) (string, string, error) {
	ns := mesh.Spec.Namespace
	if name := mesh.Spec.Certificates.RootSecretName; name != "" {
		sec := &corev1.Secret{}
		if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, sec); err != nil {
			if apierrors.IsNotFound(err) {
				return "", "", &reasonedError{ReasonCARootMissing, fmt.Errorf(
					"spec.certificates.rootSecretName: Secret %s/%s does not exist; create it with the CA's PEM tls.crt and tls.key", ns, name)}
			}
			return "", "", fmt.Errorf("get CA Secret %s/%s: %w", ns, name, err)
		}
		cert, err := validateRoot(sec)
		if err != nil {
			return "", "", &reasonedError{ReasonCARootMissing, fmt.Errorf("spec.certificates.rootSecretName: Secret %s/%s: %w", ns, name, err)}
		}
		return name, cert, nil
	}

	sec := &corev1.Secret{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: render.CARootSecretName}, sec)
	if err == nil {
		cert, err := validateRoot(sec)
		if err != nil {
			return "", "", &reasonedError{ReasonCARootMissing, fmt.Errorf(
				"generated CA Secret %s/%s is damaged (%w); delete it to generate a new root (existing workload certificates stop verifying)", ns, render.CARootSecretName, err)}
		}
		return render.CARootSecretName, cert, nil
	}
	if !apierrors.IsNotFound(err) {
		return "", "", fmt.Errorf("get CA Secret %s/%s: %w", ns, render.CARootSecretName, err)
	}
	ttl := defaultRootTTL
	if t := mesh.Spec.Certificates.RootTTL; t != nil {
		ttl = t.Duration
	}
	certPEM, keyPEM, err := generateRoot(mesh.Spec.TrustDomain, ttl, r.Now())
	if err != nil {
		return "", "", err
	}
	sec = render.CASecret(ns, certPEM, keyPEM)
	if err := controllerutil.SetControllerReference(mesh, sec, r.Scheme); err != nil {
		return "", "", fmt.Errorf("own CA Secret: %w", err)
	}
	if err := r.Client.Create(ctx, sec); err != nil {
		if apierrors.IsAlreadyExists(err) {
			// Another reconcile won the race; use its root on the next pass.
			return "", "", fmt.Errorf("CA Secret %s/%s appeared while creating it; retrying", ns, render.CARootSecretName)
		}
		return "", "", &reasonedError{ReasonApplyFailed, fmt.Errorf("create CA Secret %s/%s: %w", ns, render.CARootSecretName, err)}
	}
	r.Recorder.Eventf(mesh, nil, corev1.EventTypeNormal, ReasonCARootGenerated, "Generate",
		"Generated the mesh CA root in Secret %s/%s (ECDSA P-256, valid for %s)", ns, render.CARootSecretName, ttl)
	return render.CARootSecretName, string(certPEM), nil
}

// validateRoot checks that a Secret holds a CA certificate and a key, and returns the certificate.
func validateRoot(sec *corev1.Secret) (string, error) {
	certPEM, keyPEM := sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey]
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return "", fmt.Errorf("want keys %s and %s", corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("%s is not a PEM certificate", corev1.TLSCertKey)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("parse %s: %w", corev1.TLSCertKey, err)
	}
	if !cert.IsCA {
		return "", fmt.Errorf("%s is not a CA certificate", corev1.TLSCertKey)
	}
	return string(pem.EncodeToMemory(block)), nil
}

// generateRoot makes a self-signed ECDSA P-256 root for the trust domain.
func generateRoot(trustDomain string, ttl time.Duration, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("generate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "ambient mesh root CA"},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}
