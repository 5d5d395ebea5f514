// Package caclient is the proxies' client of the mesh CA: a certs.Provider that requests workload
// certificates with a CSR and the proxy's service-account token, caches them, renews them at half-life
// and keeps the old certificate until it expires. It imports no Kubernetes package, so the proxies' binary
// (ambient-proxy) stays small; the CA server is package ca.
package caclient
