//go:build race

package fakecsp_test

// raceEnabled slows everything down; timing assertions allow for it.
const raceEnabled = true
