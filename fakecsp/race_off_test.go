//go:build !race

package fakecsp_test

const raceEnabled = false
