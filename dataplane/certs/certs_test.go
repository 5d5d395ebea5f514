package certs_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/ambient-dev/ambient-operator/dataplane/ca"
	"github.com/ambient-dev/ambient-operator/dataplane/certs"
	"github.com/ambient-dev/ambient-operator/dataplane/identity"
)

func TestFileProvider(t *testing.T) {
	g := NewWithT(t)
	rootPEM, keyPEM, err := ca.NewRoot("cluster.local", time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	signer, err := ca.NewSigner(rootPEM, keyPEM)
	g.Expect(err).NotTo(HaveOccurred())
	dir := t.TempDir()
	rootsFile := filepath.Join(dir, "root-cert.pem")
	g.Expect(os.WriteFile(rootsFile, rootPEM, 0o600)).To(Succeed())

	id := identity.New("cluster.local", "default", "sleep")
	chain, key, err := signer.Issue(id, time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(certs.WriteFiles(dir, id, chain, key)).To(Succeed())

	p := &certs.FileProvider{Dir: dir, RootsFile: rootsFile, CheckInterval: time.Nanosecond}
	c, err := p.Certificate(context.Background(), id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c.Leaf.URIs[0].String()).To(Equal(id.String()))
	g.Expect(p.Roots()).NotTo(BeNil())

	_, err = p.Certificate(context.Background(), identity.New("cluster.local", "default", "other"))
	g.Expect(err).To(MatchError(certs.ErrNoCertificate))

	// A certificate for another identity in the wrong directory is refused.
	wrong := identity.New("cluster.local", "default", "wrong")
	g.Expect(certs.WriteFiles(dir, wrong, chain, key)).To(Succeed())
	_, err = p.Certificate(context.Background(), wrong)
	g.Expect(err).To(MatchError(ContainSubstring("not spiffe://cluster.local/ns/default/sa/wrong")))

	// A rotated certificate is picked up.
	chain2, key2, err := signer.Issue(id, 2*time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	time.Sleep(10 * time.Millisecond)
	g.Expect(certs.WriteFiles(dir, id, chain2, key2)).To(Succeed())
	future := time.Now().Add(time.Second)
	g.Expect(os.Chtimes(filepath.Join(dir, "default", "sleep", "cert-chain.pem"), future, future)).To(Succeed())
	c2, err := p.Certificate(context.Background(), id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c2.Leaf.SerialNumber).NotTo(Equal(c.Leaf.SerialNumber))

	// Files that disappear do not take the certificate away.
	g.Expect(os.RemoveAll(filepath.Join(dir, "default", "sleep"))).To(Succeed())
	c3, err := p.Certificate(context.Background(), id)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(c3).To(BeIdenticalTo(c2))
}

func TestLoadRootsErrors(t *testing.T) {
	g := NewWithT(t)
	_, err := certs.LoadRoots(filepath.Join(t.TempDir(), "missing"))
	g.Expect(err).To(HaveOccurred())
	f := filepath.Join(t.TempDir(), "empty.pem")
	g.Expect(os.WriteFile(f, []byte("not pem"), 0o600)).To(Succeed())
	_, err = certs.LoadRoots(f)
	g.Expect(err).To(MatchError(ContainSubstring("no PEM certificate")))
}
