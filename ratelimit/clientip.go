package ratelimit

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ClientIP returns the address a request's rate limit is keyed on: the
// peer's IP (r.RemoteAddr) or, only when that peer is a trusted proxy, the
// right-most X-Forwarded-For entry that is not itself a trusted proxy: the
// address the nearest trusted proxy saw. Entries further left were written
// by the client and are never used, so a client cannot choose its key.
//
// When every X-Forwarded-For entry is trusted, the left-most one is
// returned; when the header is missing or an entry is malformed, the last
// trusted address seen. Addresses are returned normalised (IPv4-mapped IPv6
// unmapped, zones dropped); a RemoteAddr that is not an IP is returned as is.
func ClientIP(r *http.Request, trusted []*net.IPNet) string {
	host := r.RemoteAddr
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	peer, ok := parseIP(host)
	if !ok {
		return host
	}
	if !isTrusted(peer, trusted) {
		return peer.String()
	}
	hops := forwardedFor(r)
	best := peer
	for i := len(hops) - 1; i >= 0; i-- {
		ip, ok := parseIP(hops[i])
		if !ok {
			break // a trusted proxy would not write this; stop at what is known
		}
		if !isTrusted(ip, trusted) {
			return ip.String()
		}
		best = ip
	}
	return best.String()
}

// forwardedFor returns every X-Forwarded-For entry, in order, across
// repeated header lines.
func forwardedFor(r *http.Request) []string {
	var hops []string
	for _, line := range r.Header.Values("X-Forwarded-For") {
		for _, h := range strings.Split(line, ",") {
			hops = append(hops, strings.TrimSpace(h))
		}
	}
	return hops
}

// parseIP parses an IP, tolerating a port ("1.2.3.4:5", "[::1]:5") and
// brackets, and normalises it.
func parseIP(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}

func isTrusted(ip netip.Addr, trusted []*net.IPNet) bool {
	nip := net.IP(ip.AsSlice())
	for _, n := range trusted {
		if n.Contains(nip) {
			return true
		}
	}
	return false
}
