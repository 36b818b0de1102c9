//go:build !race

package usernet

// raceDetector says the tests run under the race detector.
const raceDetector = false
