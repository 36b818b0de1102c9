//go:build race

package vmchannel

// raceDetector says the tests run under the race detector, whose shadow
// memory makes TestIdleMemory's figures meaningless.
const raceDetector = true
