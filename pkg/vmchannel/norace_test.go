//go:build !race

package vmchannel

// raceDetector says the tests run under the race detector.
const raceDetector = false
