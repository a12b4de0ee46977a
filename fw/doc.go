// Package fw is the firewall's control plane: the rule model, the
// reference semantics, and the pure compilation of a rule set into the
// tuple space search tables the datapath classifies with. It imports only the
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
// Tuple space search, as in Open vSwitch's classifier. Rules are numbered
// by priority (position 0 first). Each rule belongs to a scope: the
// node-wide rules of a hook, or an interface's hook for rules targeting an
// interface or an instance (once per interface of the instance). Within a
// scope and address family, rules are grouped by mask tuple: source prefix
// length, destination prefix length, protocol compared or not, and how
// many leading bits of the destination port are compared. A port range is
// split into the fewest aligned power-of-two blocks (PortBlocks: 22 is one
// block of 16 bits, 8000-8100 four blocks of 10, 11, 14 and 16 bits; no
// port is 0 bits), each block going to the tuple of its size. Every
// (scope, tuple, masked field values) is one hash entry (Compiled.Entries)
// whose value is the best (lowest) rule position producing it; a rule
// without prefixes goes into both families.
//
// Each interface hook has a search list per family: its own tuples and
// its hook's node-wide ones, sorted by the best position any of their
// entries holds. A packet masks its fields with each tuple's masks in
// turn, does one hash lookup, keeps the lowest position found, and stops
// as soon as the next tuple's best is not better than that (OVS's
// priority-sorted subtable search). The lowest position found decides;
// none found, the scope's default. Compiled.Classify is this walk in Go.
// The cost per packet is one lookup per tuple searched: it depends on how
// many kinds of rule there are, not on how many rules; a packet that
// matches an early rule stops early, one that matches nothing looks in
// every tuple of its family.
//
// The entries are not in BPF hash maps: fw/datapath lays a generation's
// entries out as a bucketized cuckoo hash table (two candidate buckets of
// four ways per entry, tagged with the hash's high half) and copies it
// into an array map's inactive half through its memory mapping; a lookup
// is at most two inlined array reads, one when the first bucket has an
// empty way (an entry is only placed in its second bucket when its first
// is full). A hash-map lookup is a helper call, and on CPUs that mitigate
// speculative return stack overflow ("Safe RET") every call's return is
// expensive; an established flow's packet makes no call at all (the
// connection table is a set-associative array too), and a new IPv4 flow
// none while its scope has at most two tuples worth searching.
//
// When an interface hook would search more than MaxTuples tuples of one
// family, Compile merges tuples (controlled expansion): tuple A joins a
// tuple B of the same scope that compares the same protocol and at least
// A's bits of every other field, each A entry expanded into the 2^k
// entries of the k extra bits (k <= 12). A packet's B-masked key equals
// one of those exactly when it matched the A entry, so verdicts are
// unchanged; the cheapest merge (fewest added entries) goes first. A set
// that still does not fit is refused whole with ErrCapacity, naming the
// interface, hook and family. 65,536 rules of a few kinds fit without
// merging; so do fwtest.LargeRuleSet's mixed sets (three prefix lengths
// per family, port ranges: 78 tuples) and fwtest.RuleSet's random sets
// (six prefix lengths each way, ranges of 1-100 ports: up to about 110
// tuples at 65,536 rules), tested at that size against the reference
// model. Only sets needing more than 128 tuples at one interface hook
// merge. A packet that matches nothing searches every tuple of its
// family (about 15 ns each on the benchmark VM), so a hook with 100
// kinds of rule costs more per new flow than one with two; established
// flows do not search at all.
//
// # Limits
//
// DefaultLimits (the maps in bpf/fw/fw.c): 65,536 rules, 128 tuples
// searched per interface, hook and family, 229,376 entries per family (one
// per rule, port block and interface; 7/8 of the entry table's 262,144
// slots per generation, a load at which the cuckoo table always builds;
// should it not, Apply tries other hash seeds, then refuses the set), 256
// attached interfaces. A set
// that does not fit is refused whole with ErrCapacity, never partially
// applied. Every table is keyed or indexed by a generation bit; a new set
// is written into the inactive half and switched in with one word, so the
// entry limit is per set, and per-rule counter slots (MaxRules of them)
// are reused from removed rules only when old and new sets together need
// more.
package fw
