package imagecache

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// redrawEvery is the shortest time between two drawings of the progress
// line: at most ten a second.
const redrawEvery = 100 * time.Millisecond

// bar draws one progress line on a terminal: bytes received, the total and
// a bar with the percentage when the total is known, and the rate of this
// transfer. A nil *bar, or one without a writer, draws nothing.
type bar struct {
	w          io.Writer
	got, total int64 // total -1: not known
	from       int64 // bytes the .part held before this transfer
	start      time.Time
	last       time.Time // of the last drawing; zero before the first
	width      int       // of the last line drawn, to blank what is left of it
	now        func() time.Time
}

func newBar(w io.Writer, have, total int64) *bar {
	return &bar{w: w, got: have, from: have, total: total, start: time.Now(), now: time.Now}
}

// add counts n more bytes and redraws the line if the last drawing is old
// enough.
func (b *bar) add(n int64) {
	if b == nil || b.w == nil {
		return
	}
	b.got += n
	if t := b.now(); b.last.IsZero() || t.Sub(b.last) >= redrawEvery {
		b.draw(t)
	}
}

// done draws the line a last time, with what arrived, and ends it.
func (b *bar) done() {
	if b == nil || b.w == nil {
		return
	}
	b.draw(b.now())
	fmt.Fprint(b.w, "\n")
}

func (b *bar) draw(t time.Time) {
	b.last = t
	line := b.line(t.Sub(b.start))
	pad := ""
	if n := len(line); n < b.width {
		pad = strings.Repeat(" ", b.width-n)
	}
	b.width = len(line)
	fmt.Fprint(b.w, "\r"+line+pad)
}

// line is the text of the progress line after elapsed time.
func (b *bar) line(elapsed time.Duration) string {
	var s strings.Builder
	if b.total >= 0 {
		pct := 100
		if b.total > 0 {
			pct = int(min(b.got, b.total) * 100 / b.total)
		}
		const cells = 30
		full := pct * cells / 100
		s.WriteString("[" + strings.Repeat("=", full))
		if full < cells {
			s.WriteString(">" + strings.Repeat(" ", cells-full-1))
		}
		fmt.Fprintf(&s, "] %3d%%  %s / %s", pct, size(b.got), size(b.total))
	} else {
		s.WriteString(size(b.got))
	}
	if secs := elapsed.Seconds(); secs >= 0.05 {
		fmt.Fprintf(&s, "  %s/s", size(int64(float64(b.got-b.from)/secs)))
	}
	return s.String()
}

// size is n bytes in binary units, to one decimal.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), -1
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTP"[i])
}
