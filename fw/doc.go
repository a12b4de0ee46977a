// Package fw is the firewall's control plane: the rule model, the
// reference semantics, and the pure compilation of a rule set into the
// per-field tables the datapath classifies with. It imports only the
// standard library (net/netip) and internal/statefile; fw/datapath turns a Compiled into bpf/fw's
// maps, and cmd/qbod wires both to the "firewall" mirror.
//
// # Semantics
//
// A Rule matches on source and destination prefix (IPv4 or IPv6),
// protocol (tcp, udp, icmp = ICMP or ICMPv6), and destination port or
// range (tcp/udp only). It applies to a Target (an interface, an instance
// or container through its host-side interfaces, or the whole node, i.e.
// every interface the firewall is attached to) in one Direction, seen from
// the target. Among the rules that apply at a packet's interface and hook,
// the lowest Priority that matches decides (ties: the lower name); if none
// matches, the target's default Policy decides (interface, else instance,
// else node, else allow). Evaluate is the executable reference of these
// semantics, deliberately a linear scan; Compiled.Classify and the BPF
// datapath are tested against it (unit, differential and fuzz tests).
//
// The datapath is stateful: a packet allowed as the first of a flow
// records the flow, and the flow's later packets, its replies and ICMP
// errors quoting it pass without classification. Rule changes therefore
// apply to new flows; RuleSet.Reevaluate makes each tracked flow be judged
// again by the newer rule set on its next packet. Later fragments follow
// the verdict of their first fragment.
//
// # Classification scheme
//
// Rules are numbered in priority order; bit i of a bitmap is rule i. For
// every field, Compile builds a table from field value to the bitmap of
// rules that field value satisfies:
//
//   - scope: (interface, hook) -> rules targeting it, plus its default;
//   - source and destination: an LPM trie per family; each prefix's bitmap
//     also holds the rules of every shorter prefix containing it, so one
//     longest-prefix lookup gives every rule whose prefix contains the
//     address (rules without a prefix live in /0);
//   - protocol: tcp, udp, icmp, icmpv6 and "other" -> rules;
//   - destination port: the port space cut at every rule boundary into
//     intervals; a 64Ki array maps a port to its interval, a hash maps the
//     interval to its bitmap (port 0 stands for "no port").
//
// The verdict is the lowest set bit of the AND of the five bitmaps, else
// the default. Each bitmap carries a summary word per 64 words (bit j set
// when word j is non-zero); the datapath ANDs the summaries after each
// lookup, stops as soon as they are empty, and otherwise visits only the
// candidate words in order. Cost per packet is five lookups plus the
// candidate words: constant when fields select disjoint rule groups,
// and at worst proportional to MaxRules/64 words when many words hold
// rules that match in every field but never the same rule (see
// docs/BENCHMARKS.md for both cases). This is the bpf-iptables design
// (per-field lookups combined by bitmaps) plus the summary level.
//
// # Limits
//
// DefaultLimits: 16384 rules (bitmaps of 256 words + 4 summary words, 2080
// bytes per table entry), 16385 distinct prefixes per field and family, 256
// attached interfaces. Table memory grows with distinct prefixes times
// bitmap size, which is why the rule limit is not higher: a set that does
// not fit is refused whole with ErrCapacity, never partially applied.
package fw
