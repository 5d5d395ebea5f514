// Package bench is the data-plane benchmark harness behind `make bench` (cmd/ambient-bench).
//
// It measures the node proxies the way DESIGN.md section 7 states its bars: every figure is a ratio
// against baselines measured in the same run on the same machine, each proxy a separate process:
//
//   - direct: client -> server;
//   - relay2: client -> plain TCP relay -> plain TCP relay -> server (two io.Copy processes: the hops of a
//     node-to-node path without crypto or HTTP/2);
//   - hbone: client -> node-a (captured by an iptables DNAT to its outbound port) -> HBONE (mutual TLS and
//     HTTP/2 CONNECT) -> node-b -> server, with real ambient-dataplane node processes.
//
// The harness creates a network namespace of its own and re-executes itself inside it, so that the
// iptables rules and loopback addresses it uses touch nothing else. The server, the relays and the
// clients are modes of the same binary ([Serve], [Relay], and the client functions such as
// [Throughput]); the clients run as separate processes too, so that the whole chain can be pinned to one
// CPU with taskset.
package bench
