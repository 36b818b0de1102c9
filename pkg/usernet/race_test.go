//go:build race

package usernet

// raceDetector says the tests run under the race detector, which makes the
// network some fifteen times slower: TestGuestFlood sends a tenth as much.
const raceDetector = true
