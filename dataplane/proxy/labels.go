package proxy

import (
	"cmp"

	"github.com/ambient-dev/ambient-operator/dataplane/identity"
	"github.com/ambient-dev/ambient-operator/dataplane/state"
	"github.com/ambient-dev/ambient-operator/dataplane/telemetry"
)

// workloadName is the workload's name as Istio's telemetry reports it: its application (canonical) name,
// else the pod name.
func workloadName(w *state.Workload) string {
	return cmp.Or(w.Proto.GetCanonicalName(), w.Name())
}

func setSource(l *telemetry.ConnectionLabels, w *state.Workload, id identity.Identity) {
	l.SourcePrincipal = id.String()
	if w == nil {
		return
	}
	l.SourceWorkload = workloadName(w)
	l.SourceWorkloadNamespace = w.Namespace()
	l.SourceCanonicalService = workloadName(w)
	l.SourceCanonicalRevision = cmp.Or(w.Proto.GetCanonicalRevision(), "latest")
	l.SourceApp, l.SourceVersion = l.SourceCanonicalService, l.SourceCanonicalRevision
}

func setDestination(l *telemetry.ConnectionLabels, svc *state.Service, w *state.Workload, id identity.Identity, trustDomain string) {
	l.DestinationPrincipal = id.String()
	if svc != nil {
		l.DestinationService = svc.Name() + "." + svc.Namespace() + ".svc." + clusterDomain(trustDomain)
		l.DestinationServiceName = svc.Name()
		l.DestinationServiceNamespace = svc.Namespace()
	}
	if w == nil {
		return
	}
	l.DestinationWorkload = workloadName(w)
	l.DestinationWorkloadNamespace = w.Namespace()
	l.DestinationCanonicalService = workloadName(w)
	l.DestinationCanonicalRevision = cmp.Or(w.Proto.GetCanonicalRevision(), "latest")
	l.DestinationApp, l.DestinationVersion = l.DestinationCanonicalService, l.DestinationCanonicalRevision
}

// clusterDomain is the DNS domain of services; the mesh's trust domain is the cluster domain unless set
// otherwise, as in Istio.
func clusterDomain(trustDomain string) string { return cmp.Or(trustDomain, "cluster.local") }

func securityPolicy(mtls bool) string {
	if mtls {
		return telemetry.SecurityPolicyMutualTLS
	}
	return telemetry.SecurityPolicyUnknown
}

func outboundLabels(src *state.Workload, r route, trustDomain string) telemetry.ConnectionLabels {
	l := telemetry.ConnectionLabels{Reporter: telemetry.ReporterSource, ConnectionSecurityPolicy: securityPolicy(r.hbone)}
	setSource(&l, src, src.Identity)
	dstID := identity.Identity{}
	if r.workload != nil && r.workload.InMesh() {
		dstID = r.workload.Identity
	}
	setDestination(&l, r.service, r.workload, dstID, trustDomain)
	return l
}
