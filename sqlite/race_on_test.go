//go:build race

package sqlite

// raceEnabled: the race detector instruments the transpiled SQLite code and
// makes bulk data setup ~30x slower; tests that need big pools shrink or skip
// (the non-race pass of `make test` runs them in full).
const raceEnabled = true
