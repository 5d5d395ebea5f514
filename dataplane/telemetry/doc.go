// Package telemetry makes the mesh proxies observable: logging with a level that changes at run time,
// Istio-compatible Prometheus metrics, one access-log line per connection, and the small HTTP servers
// every proxy runs (admin on localhost:15000, metrics on 15020, readiness on 15021).
//
// The pieces are independent; a proxy typically wires them like this:
//
//	logging, _ := telemetry.NewLogging(os.Stderr, "info")
//	log := logging.Logger()
//	metrics := telemetry.NewMetrics()
//	access := telemetry.NewAccessLog(log)
//	ready := telemetry.NewReadiness("config", "workloads")
//
//	// per connection, once the peers are known:
//	conn := metrics.Open(telemetry.ConnectionLabels{Reporter: telemetry.ReporterSource, ...})
//	conn.AddReceived(n) // from the copy loop: n bytes read from the source, forwarded to the destination
//	conn.AddSent(n)     // from the copy loop: n bytes from the destination, written back to the source
//	conn.Close()        // or conn.Fail(telemetry.FailureDenied)
//	access.Log(telemetry.AccessLogEntry{..., BytesSent: conn.Sent(), BytesReceived: conn.Received(),
//		Result: conn.Result()})
//
//	// servers, each stopped when ctx ends:
//	go telemetry.Run(ctx, telemetry.NewServer(telemetry.DefaultAdminAddr, telemetry.NewAdminHandler(
//		telemetry.AdminOptions{ConfigDump: dump, Logging: logging, Shutdown: cancel})))
//	go telemetry.Run(ctx, telemetry.NewServer(telemetry.DefaultMetricsAddr, metrics.Handler()))
//	go telemetry.Run(ctx, telemetry.NewServer(telemetry.DefaultReadinessAddr, ready.Handler()))
//
// Byte directions follow Istio and Envoy everywhere (metrics and access log): "received" counts the
// bytes of the request direction, read from the source side of the connection; "sent" counts the bytes of
// the response direction, written back to the source side. This holds for every reporter.
package telemetry
