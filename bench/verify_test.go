package main

import (
	"net/http"
	"testing"
	"time"
)

func rec(owner string, answers ...answer) studentRecord {
	return studentRecord{owner: owner, key: "key-" + owner, answers: answers}
}

func ok201(id string) answer {
	return answer{status: http.StatusCreated, sandbox: id, name: "lab-" + id}
}
func ok200(id string) answer { return answer{status: http.StatusOK, sandbox: id, name: "lab-" + id} }

func alloc(id, owner string) allocation {
	return allocation{id: id, name: "lab-" + id, owner: owner, key: "key-" + owner}
}

func TestVerify(t *testing.T) {
	cases := []struct {
		name    string
		records []studentRecord
		store   []allocation
		multi   int
		check   func(verifyResult) bool
	}{
		{"clean run with a replay", []studentRecord{rec("r-a", ok201("1"), ok200("1")), rec("r-b", ok201("2"))},
			[]allocation{alloc("1", "r-a"), alloc("2", "r-b")}, 0,
			func(v verifyResult) bool { return v.OK() && v.Acked == 2 && v.StoreAllocated == 2 }},
		{"one sandbox answered to two students", []studentRecord{rec("r-a", ok201("1")), rec("r-b", ok201("1"))},
			[]allocation{alloc("1", "r-b")}, 0,
			func(v verifyResult) bool { return v.Doubles == 1 && v.Lost == 1 && !v.OK() }},
		{"two 201s for one key", []studentRecord{rec("r-a", ok201("1"), ok201("1"))},
			[]allocation{alloc("1", "r-a")}, 0,
			func(v verifyResult) bool { return v.Doubles == 1 && !v.OK() }},
		{"replay answers another sandbox", []studentRecord{rec("r-a", ok201("1"), ok200("2"))},
			[]allocation{alloc("1", "r-a")}, 0,
			func(v verifyResult) bool { return v.Mismatches == 1 && v.Lost == 1 && !v.OK() }},
		{"store holds two sandboxes for one key", []studentRecord{rec("r-a", ok201("1"))},
			[]allocation{alloc("1", "r-a"), alloc("2", "r-a")}, 0,
			func(v verifyResult) bool { return v.Doubles == 1 && !v.OK() }},
		{"201 not in the store", []studentRecord{rec("r-a", ok201("1"))}, nil, 0,
			func(v verifyResult) bool { return v.Lost == 1 && !v.OK() }},
		{"409 but allocated", []studentRecord{rec("r-a", answer{status: http.StatusConflict})},
			[]allocation{alloc("1", "r-a")}, 0,
			func(v verifyResult) bool { return v.Mismatches == 1 && !v.OK() }},
		{"transport error, allocated anyway", []studentRecord{rec("r-a", answer{err: "EOF"})},
			[]allocation{alloc("1", "r-a")}, 0,
			func(v verifyResult) bool { return v.Unacked == 1 && v.OK() }},
		{"audit trail shows a second allocation", []studentRecord{rec("r-a", ok201("1"))},
			[]allocation{alloc("1", "r-a")}, 1,
			func(v verifyResult) bool { return v.Doubles == 1 && !v.OK() }},
		{"other runs' allocations are ignored", []studentRecord{rec("r-a", ok201("1"))},
			[]allocation{alloc("1", "r-a"), alloc("9", "other-x")}, 0,
			func(v verifyResult) bool { return v.OK() && v.StoreAllocated == 1 }},
		{"prefix not honoured", []studentRecord{{owner: "r-a", key: "key-r-a", prefix: "zzz", answers: []answer{ok201("1")}}},
			[]allocation{alloc("1", "r-a")}, 0,
			func(v verifyResult) bool { return v.PrefixViolated == 1 && !v.OK() }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := verify(c.records, storeView{allocated: c.store, multiAllocated: c.multi}, "r-")
			if !c.check(v) {
				t.Errorf("unexpected verdict: %s %v", v, v.Notes)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	l := summarize(d)
	if l.N != 100 || l.P50 != 50*time.Millisecond || l.P95 != 95*time.Millisecond || l.P99 != 99*time.Millisecond || l.Max != 100*time.Millisecond {
		t.Errorf("summarize: %+v", l)
	}
	if (summarize(nil) != latency{}) {
		t.Error("summarize(nil) is not zero")
	}
}
