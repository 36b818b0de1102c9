package imagecache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const imagePath = "/images/debian-12-genericcloud-amd64.qcow2"
const imageName = "debian-12-genericcloud-amd64.qcow2"

// origin is the test's image server, on loopback. It serves content with
// http.ServeContent (ranges, If-Range) and can be told to misbehave.
type origin struct {
	mu            sync.Mutex
	content       []byte
	etag          string    // "": no ETag
	modtime       time.Time // zero: no Last-Modified
	noRange       bool      // answer every request with the whole file (200)
	ignoreIfRange bool      // serve ranges even when the file changed
	rangeFromZero bool      // answer a Range request with 206 from byte 0
	status        int       // non-zero: answer this status instead
	short         int       // non-zero: announce the whole length, send this many bytes, end the handler
	cut           int       // non-zero: the next response stops after this many body bytes...
	hold          bool      // ...then waits for the client to go away, instead of dropping the connection
	before        func()    // called first on every request, without mu held
	reqs          []seen
}

// seen is what origin saw of one request and answered.
type seen struct {
	rng, ifRange, acceptEncoding string
	auth                         string // user:password of basic authentication
	status                       int
	sent                         int
}

func newOrigin(t *testing.T, content []byte) (*origin, *httptest.Server) {
	o := &origin{content: content, etag: `"v1"`}
	srv := httptest.NewServer(o)
	t.Cleanup(srv.Close)
	return o, srv
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if o.before != nil {
		o.before()
	}
	o.mu.Lock()
	i := len(o.reqs)
	user, pass, _ := r.BasicAuth()
	o.reqs = append(o.reqs, seen{rng: r.Header.Get("Range"), ifRange: r.Header.Get("If-Range"),
		acceptEncoding: r.Header.Get("Accept-Encoding"), auth: user + ":" + pass})
	content, etag, modtime := o.content, o.etag, o.modtime
	rw := &recorder{ResponseWriter: w, o: o, i: i, cut: o.cut, hold: o.hold, r: r}
	o.cut, o.hold = 0, false
	status, short := o.status, o.short
	if o.noRange {
		r.Header.Del("Range")
	}
	if o.ignoreIfRange {
		r.Header.Del("If-Range")
	}
	if o.rangeFromZero && r.Header.Get("Range") != "" {
		r.Header.Set("Range", "bytes=0-")
	}
	o.mu.Unlock()

	switch {
	case status != 0:
		http.Error(rw, http.StatusText(status), status)
		return
	case short != 0:
		rw.Header().Set("Content-Length", itoa(len(content)))
		rw.WriteHeader(http.StatusOK)
		rw.Write(content[:short])
		return
	}
	if etag != "" {
		rw.Header().Set("ETag", etag)
	}
	http.ServeContent(rw, r, "", modtime, bytes.NewReader(content))
}

func itoa(n int) string { return strconv.Itoa(n) }

var errCut = errors.New("cut by the test")

// recorder notes the status and body bytes of one response, and cuts it
// short when told to.
type recorder struct {
	http.ResponseWriter
	o    *origin
	i    int
	cut  int
	hold bool
	r    *http.Request
	dead bool
}

func (w *recorder) WriteHeader(code int) {
	w.o.mu.Lock()
	w.o.reqs[w.i].status = code
	w.o.mu.Unlock()
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.dead {
		return 0, errCut
	}
	cutting := w.cut > 0 && len(p) >= w.cut
	if cutting {
		p = p[:w.cut]
	}
	n, err := w.ResponseWriter.Write(p)
	w.o.mu.Lock()
	w.o.reqs[w.i].sent += n
	w.o.mu.Unlock()
	if w.cut > 0 {
		w.cut -= n
	}
	if !cutting || err != nil {
		return n, err
	}
	w.dead = true
	rc := http.NewResponseController(w.ResponseWriter)
	rc.Flush()
	if w.hold {
		<-w.r.Context().Done()
		return n, errCut
	}
	conn, _, err := rc.Hijack()
	if err != nil {
		panic(err)
	}
	conn.Close()
	return n, errCut
}

func (o *origin) requests() []seen {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]seen(nil), o.reqs...)
}

func (o *origin) set(f func(o *origin)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f(o)
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sumOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// entryDir is where the cache in dir keeps rawURL, computed here from the
// package's documentation rather than by the package.
func entryDir(dir, rawURL string) string {
	s := sha256.Sum256([]byte(rawURL))
	return filepath.Join(dir, hex.EncodeToString(s[:]))
}

func mustContent(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes, sha256 %s; want %d bytes, sha256 %s", path, len(got), sumOf(got), len(want), sumOf(want))
	}
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: want it absent, stat says %v", path, err)
	}
}

// TestFetchOnceThenFromCache: a download lands where the package doc says,
// byte for byte, with its record; later Fetches of the URL make no request,
// check a given sum against the record, and keep the file when it differs.
func TestFetchOnceThenFromCache(t *testing.T) {
	content := randomBytes(1<<20+17, 1)
	o, srv := newOrigin(t, content)
	c := Cache{Dir: t.TempDir(), Client: srv.Client()}
	u := srv.URL + imagePath

	path, err := c.Fetch(context.Background(), u, sumOf(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := entryDir(c.Dir, u)
	if want := filepath.Join(dir, imageName); path != want {
		t.Fatalf("path %s, want %s", path, want)
	}
	mustContent(t, path, content)
	mustNotExist(t, path+".part")
	m, err := readMeta(entry{dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if m != (meta{URL: u, Name: imageName, Size: int64(len(content)), SHA256: sumOf(content), ETag: `"v1"`}) {
		t.Fatalf("record %+v", m)
	}
	if r := o.requests(); len(r) != 1 || r[0].rng != "" || r[0].acceptEncoding != "identity" {
		t.Fatalf("requests %+v, want one whole-file request asking for the identity encoding", r)
	}

	// Again, with no sum, with the sum in capitals, with a fragment: no request.
	for _, args := range [][2]string{{u, ""}, {u, strings.ToUpper(sumOf(content))}, {u + "#frag", ""}} {
		p, err := c.Fetch(context.Background(), args[0], args[1], nil)
		if err != nil || p != path {
			t.Fatalf("Fetch(%q, %q) = %q, %v; want %q", args[0], args[1], p, err, path)
		}
	}
	// The check uses the recorded sum: with other bytes of the same size
	// in the file, the right sum still passes and the wrong one still
	// names the sum of what was downloaded.
	other := randomBytes(len(content), 99)
	if err := os.WriteFile(path, other, 0o644); err != nil {
		t.Fatal(err)
	}
	wrong := sumOf(other)
	if _, err := c.Fetch(context.Background(), u, sumOf(content), nil); err != nil {
		t.Fatalf("Fetch with the recorded sum: %v (was the file read?)", err)
	}
	_, err = c.Fetch(context.Background(), u, wrong, nil)
	var ce *ChecksumError
	if !errors.As(err, &ce) || ce.Got != sumOf(content) || ce.Want != wrong || ce.Cached != path {
		t.Fatalf("Fetch with the wrong sum: %v; want a *ChecksumError for the cached file", err)
	}
	for _, s := range []string{u, sumOf(content), wrong, path} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	// The file is kept: the sum given may be the wrong one.
	mustContent(t, path, other)
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	mustContent(t, path, content)
	if n := len(o.requests()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

// TestResume: a download cut short (the connection dropped, or the
// caller's ctx cancelled) leaves a .part that the next Fetch completes with
// a Range request guarded by If-Range, byte for byte. Without a validator
// to guard it with, the next Fetch starts again from zero.
func TestResume(t *testing.T) {
	content := randomBytes(3<<19+5, 2)
	half := len(content) / 2
	for _, tc := range []struct {
		name        string
		cancel      bool // the caller cancels, instead of the server dropping the connection
		etag        string
		modtime     time.Time
		wantRange   string
		wantIfRange string
	}{
		{name: "dropped", etag: `"v1"`, wantRange: "bytes=" + itoa(half) + "-", wantIfRange: `"v1"`},
		{name: "cancelled", cancel: true, etag: `"v1"`, wantRange: "bytes=" + itoa(half) + "-", wantIfRange: `"v1"`},
		{name: "weak etag, last-modified", etag: `W/"v1"`, modtime: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
			wantRange: "bytes=" + itoa(half) + "-", wantIfRange: "Thu, 02 Jan 2025 03:04:05 GMT"},
		{name: "no validator"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, srv := newOrigin(t, content)
			o.set(func(o *origin) { o.etag, o.modtime, o.cut, o.hold = tc.etag, tc.modtime, half, tc.cancel })
			c := Cache{Dir: t.TempDir(), Client: srv.Client()}
			u := srv.URL + imagePath
			part := filepath.Join(entryDir(c.Dir, u), imageName+".part")

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				// Cancel once half the file is in the .part.
				go func() {
					for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
						if st, err := os.Stat(part); err == nil && st.Size() == int64(half) {
							break
						}
					}
					cancel()
				}()
			}
			_, err := c.Fetch(ctx, u, sumOf(content), nil)
			if err == nil || !strings.Contains(err.Error(), u) {
				t.Fatalf("interrupted Fetch: %v; want an error naming %s", err, u)
			}
			if tc.cancel && !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled Fetch: %v; want it to wrap context.Canceled", err)
			}
			mustNotExist(t, filepath.Join(entryDir(c.Dir, u), imageName))
			mustContent(t, part, content[:half])

			path, err := c.Fetch(context.Background(), u, sumOf(content), nil)
			if err != nil {
				t.Fatal(err)
			}
			mustContent(t, path, content)
			mustNotExist(t, part)
			r := o.requests()
			if len(r) != 2 {
				t.Fatalf("requests %+v, want 2", r)
			}
			if r[1].rng != tc.wantRange || r[1].ifRange != tc.wantIfRange {
				t.Fatalf("second request: Range %q If-Range %q; want %q %q", r[1].rng, r[1].ifRange, tc.wantRange, tc.wantIfRange)
			}
			wantStatus, wantSent := http.StatusPartialContent, len(content)-half
			if tc.wantRange == "" {
				wantStatus, wantSent = http.StatusOK, len(content)
			}
			if r[1].status != wantStatus || r[1].sent != wantSent {
				t.Fatalf("second answer: %d with %d bytes; want %d with %d", r[1].status, r[1].sent, wantStatus, wantSent)
			}
		})
	}
}

// interrupted leaves a .part of half the content in c for u.
func interrupted(t *testing.T, c Cache, o *origin, u string, half int) {
	t.Helper()
	o.set(func(o *origin) { o.cut = half })
	if _, err := c.Fetch(context.Background(), u, "", nil); err == nil {
		t.Fatal("interrupted Fetch succeeded")
	}
	mustContent(t, filepath.Join(entryDir(c.Dir, u), imageName+".part"), o.content[:half])
}

// TestRestartWithoutRangeSupport: a server that answers a Range request
// with the whole file (200) gets a file from zero, not the file appended to
// the .part.
func TestRestartWithoutRangeSupport(t *testing.T) {
	content := randomBytes(1<<20, 3)
	o, srv := newOrigin(t, content)
	c := Cache{Dir: t.TempDir(), Client: srv.Client()}
	u := srv.URL + imagePath
	interrupted(t, c, o, u, len(content)/3)
	o.set(func(o *origin) { o.noRange = true })

	path, err := c.Fetch(context.Background(), u, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	mustContent(t, path, content)
	r := o.requests()
	if len(r) != 2 || r[1].rng == "" || r[1].status != http.StatusOK {
		t.Fatalf("requests %+v; want the second to ask for a range and get 200", r)
	}
}

// TestRestartWhenChanged: when the file changed on the server since the
// .part began (another ETag), the next Fetch gets the new file whole: in
// one request from a server that honours If-Range, and with a second
// request from one that ignores it and sends the range of the new file.
func TestRestartWhenChanged(t *testing.T) {
	old := randomBytes(1<<20, 4)
	t.Run("if-range honoured", func(t *testing.T) {
		o, srv := newOrigin(t, old)
		c := Cache{Dir: t.TempDir(), Client: srv.Client()}
		u := srv.URL + imagePath
		interrupted(t, c, o, u, len(old)/2)
		changed := randomBytes(3<<19, 5)
		o.set(func(o *origin) { o.content, o.etag = changed, `"v2"` })

		path, err := c.Fetch(context.Background(), u, sumOf(changed), nil)
		if err != nil {
			t.Fatal(err)
		}
		mustContent(t, path, changed)
		r := o.requests()
		if len(r) != 2 || r[1].ifRange != `"v1"` || r[1].status != http.StatusOK {
			t.Fatalf("requests %+v; want the second to carry If-Range \"v1\" and get 200", r)
		}
		m, _ := readMeta(entry{dir: entryDir(c.Dir, u)})
		if m.ETag != `"v2"` || m.Size != int64(len(changed)) {
			t.Fatalf("record %+v; want the new file's", m)
		}
	})
	t.Run("if-range ignored", func(t *testing.T) {
		o, srv := newOrigin(t, old)
		c := Cache{Dir: t.TempDir(), Client: srv.Client()}
		u := srv.URL + imagePath
		interrupted(t, c, o, u, len(old)/2)
		changed := randomBytes(len(old), 6) // same length: only the ETag tells
		o.set(func(o *origin) { o.content, o.etag, o.ignoreIfRange = changed, `"v2"`, true })

		path, err := c.Fetch(context.Background(), u, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		mustContent(t, path, changed)
		r := o.requests()
		if len(r) != 3 || r[1].status != http.StatusPartialContent || r[2].rng != "" || r[2].status != http.StatusOK {
			t.Fatalf("requests %+v; want a refused 206, then a whole-file request", r)
		}
	})
}

// TestRangeRefused: a resume the server answers without data that
// continues the .part (a 206 of another range, a 416 for a file now
// shorter than the .part) is followed by a request from zero.
func TestRangeRefused(t *testing.T) {
	content := randomBytes(1<<20, 15)
	for _, tc := range []struct {
		name   string
		set    func(o *origin)
		status int
	}{
		{"206 from zero", func(o *origin) { o.rangeFromZero = true }, http.StatusPartialContent},
		{"416", func(o *origin) { o.content, o.ignoreIfRange = content[:1000], true }, http.StatusRequestedRangeNotSatisfiable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, srv := newOrigin(t, content)
			c := Cache{Dir: t.TempDir(), Client: srv.Client()}
			u := srv.URL + imagePath
			interrupted(t, c, o, u, len(content)/2)
			o.set(tc.set)
			path, err := c.Fetch(context.Background(), u, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			mustContent(t, path, o.content)
			r := o.requests()
			if len(r) != 3 || r[1].status != tc.status || r[2].rng != "" || r[2].status != http.StatusOK {
				t.Fatalf("requests %+v; want a refused resume (%d), then a whole-file request", r, tc.status)
			}
		})
	}
}

// TestWrongChecksum: a download whose sha256 is not the given one fails
// with an error naming both sums, and leaves neither the file nor a .part;
// the next Fetch downloads again.
func TestWrongChecksum(t *testing.T) {
	content := randomBytes(1<<19, 7)
	o, srv := newOrigin(t, content)
	c := Cache{Dir: t.TempDir(), Client: srv.Client()}
	u := srv.URL + imagePath
	dir := entryDir(c.Dir, u)
	wrong := sumOf([]byte("not the image"))

	// Once from zero, once resuming a .part: both discard everything.
	for _, resume := range []bool{false, true} {
		if resume {
			interrupted(t, c, o, u, len(content)/2)
		}
		_, err := c.Fetch(context.Background(), u, wrong, nil)
		want := "image " + u + ": sha256 is " + sumOf(content) + ", want " + wrong + "; nothing was kept"
		if err == nil || err.Error() != want {
			t.Fatalf("error %v\nwant %s", err, want)
		}
		var ce *ChecksumError
		if !errors.As(err, &ce) || ce.Cached != "" {
			t.Fatalf("error %#v; want a *ChecksumError with no cached file", err)
		}
		mustNotExist(t, filepath.Join(dir, imageName))
		mustNotExist(t, filepath.Join(dir, imageName+".part"))
		mustNotExist(t, filepath.Join(dir, metaFile))
	}
	n := len(o.requests())
	path, err := c.Fetch(context.Background(), u, sumOf(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustContent(t, path, content)
	if r := o.requests(); len(r) != n+1 || r[n].rng != "" {
		t.Fatalf("requests %+v; want one more, from zero", r)
	}
}

// TestRefusedURLs: only absolute http and https URLs are fetched; nothing
// else makes a request or creates anything, and a malformed sum is refused
// before any request.
func TestRefusedURLs(t *testing.T) {
	o, srv := newOrigin(t, []byte("image"))
	c := Cache{Dir: filepath.Join(t.TempDir(), "cache"), Client: srv.Client()}
	for _, u := range []string{
		"ftp://" + strings.TrimPrefix(srv.URL, "http://") + imagePath,
		"file:///etc/passwd",
		"/var/lib/images/debian.qcow2",
		"debian.qcow2",
		"http:///no-host",
		"http://127.0.0.1:%zz/x",
		"ftp://user:secret@example.org/image.img",
	} {
		_, err := c.Fetch(context.Background(), u, "", nil)
		if err == nil {
			t.Errorf("Fetch(%q) succeeded", u)
			continue
		}
		shown := strings.Replace(u, "secret", "xxxxx", 1)
		if !strings.HasPrefix(err.Error(), "image ") || !strings.Contains(err.Error(), shown) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Fetch(%q): %v; want an error naming it, without its password", u, err)
		}
	}
	for _, want := range []string{"abc", strings.Repeat("0", 63), strings.Repeat("g", 64), sumOf(nil) + "00"} {
		if _, err := c.Fetch(context.Background(), srv.URL+imagePath, want, nil); err == nil || !strings.Contains(err.Error(), "not 64 hex digits") {
			t.Errorf("Fetch with sum %q: %v; want it refused", want, err)
		}
	}
	if _, err := (Cache{}).Fetch(context.Background(), srv.URL+imagePath, "", nil); err == nil {
		t.Error("Fetch with no Dir succeeded")
	}
	mustNotExist(t, c.Dir)
	if n := len(o.requests()); n != 0 {
		t.Fatalf("%d requests, want none", n)
	}
}

// TestHTTPErrors: a status other than 200 and 206, and a body shorter than
// its Content-Length, are errors naming the URL, and no complete file is
// made.
func TestHTTPErrors(t *testing.T) {
	content := randomBytes(1<<19, 8)
	for _, tc := range []struct {
		name  string
		set   func(o *origin)
		want  string
		parts bool // what arrived stays in a .part
	}{
		{"404", func(o *origin) { o.status = http.StatusNotFound }, "the server answered 404 Not Found", false},
		{"500", func(o *origin) { o.status = http.StatusInternalServerError }, "the server answered 500 Internal Server Error", false},
		{"truncated", func(o *origin) { o.short = 1000 }, "the server sent 1000 of " + itoa(len(content)) + " bytes", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, srv := newOrigin(t, content)
			o.set(tc.set)
			c := Cache{Dir: t.TempDir(), Client: srv.Client()}
			u := srv.URL + imagePath
			_, err := c.Fetch(context.Background(), u, "", nil)
			if err == nil || !strings.Contains(err.Error(), u) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want one naming %s and saying %q", err, u, tc.want)
			}
			dir := entryDir(c.Dir, u)
			mustNotExist(t, filepath.Join(dir, imageName))
			if tc.parts {
				mustContent(t, filepath.Join(dir, imageName+".part"), content[:1000])
			} else {
				mustNotExist(t, filepath.Join(dir, imageName+".part"))
			}
		})
	}
}

// TestStalled: a transfer that receives nothing for IdleTimeout ends with
// an error saying so, and keeps what arrived for the next Fetch.
func TestStalled(t *testing.T) {
	content := randomBytes(1<<19, 9)
	o, srv := newOrigin(t, content)
	o.set(func(o *origin) { o.cut, o.hold = 1000, true })
	c := Cache{Dir: t.TempDir(), Client: srv.Client(), IdleTimeout: 300 * time.Millisecond}
	u := srv.URL + imagePath
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Fetch(ctx, u, "", nil)
	if err == nil || !strings.Contains(err.Error(), u) || !strings.Contains(err.Error(), "no data received for 300ms after 1000 bytes") {
		t.Fatalf("error %v; want the stall named", err)
	}
	part := filepath.Join(entryDir(c.Dir, u), imageName+".part")
	mustContent(t, part, content[:1000])
	path, err := c.Fetch(ctx, u, sumOf(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustContent(t, path, content)
}

// TestCrashRecovery: the states a killed Fetch can leave between its steps
// are finished without a request: a .part that holds everything (killed
// before the rename), a file without its sum recorded (killed after it).
func TestCrashRecovery(t *testing.T) {
	content := randomBytes(1<<19, 10)
	o, srv := newOrigin(t, content)
	c := Cache{Dir: t.TempDir(), Client: srv.Client()}
	u := srv.URL + imagePath
	path, err := c.Fetch(context.Background(), u, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	e := entry{dir: entryDir(c.Dir, u), key: u}
	m, _ := readMeta(e)

	// Killed before the rename: everything in the .part, the record
	// without a sum.
	os.Rename(path, path+".part")
	m.SHA256 = ""
	if err := writeMeta(e, m); err != nil {
		t.Fatal(err)
	}
	if p, err := c.Fetch(context.Background(), u, sumOf(content), nil); err != nil || p != path {
		t.Fatalf("Fetch = %q, %v", p, err)
	}
	mustContent(t, path, content)

	// Killed after the rename, before the record: the file is read once
	// and its sum recorded.
	os.Remove(filepath.Join(e.dir, metaFile))
	wrong := sumOf(nil)
	var ce *ChecksumError
	if _, err := c.Fetch(context.Background(), u, wrong, nil); !errors.As(err, &ce) || ce.Got != sumOf(content) || ce.Cached != path {
		t.Fatalf("Fetch with the wrong sum: %v", err)
	}
	if m, err := readMeta(e); err != nil || m.SHA256 != sumOf(content) || m.Size != int64(len(content)) {
		t.Fatalf("record %+v, %v; want the sum recorded", m, err)
	}
	if n := len(o.requests()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}

	// A cached file whose size is not the recorded one is reported, not
	// used.
	if err := os.Truncate(path, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(context.Background(), u, "", nil); err == nil || !strings.Contains(err.Error(), "is 10 bytes") {
		t.Fatalf("Fetch of a cut cached file: %v", err)
	}
}

// lineWriter is a progress writer that tells, on a channel, when a line
// containing a given text has been written.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	text string
	seen chan struct{}
	once sync.Once
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.text) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

// TestConcurrentFetches: while one Fetch downloads a URL, a second Fetch
// of it waits (and says so), then returns the same file without a request
// of its own.
func TestConcurrentFetches(t *testing.T) {
	content := randomBytes(1<<20, 11)
	o, srv := newOrigin(t, content)
	started := make(chan struct{}, 2)
	gate := make(chan struct{})
	o.before = func() { started <- struct{}{}; <-gate }
	c := Cache{Dir: t.TempDir(), Client: srv.Client()}
	u := srv.URL + imagePath

	type result struct {
		path string
		err  error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	go func() {
		p, err := c.Fetch(context.Background(), u, "", nil)
		first <- result{p, err}
	}()
	<-started
	w := &lineWriter{text: "waiting for another fetch of " + u, seen: make(chan struct{})}
	go func() {
		p, err := c.Fetch(context.Background(), u, sumOf(content), w)
		second <- result{p, err}
	}()
	select {
	case <-w.seen:
	case <-started:
		close(gate)
		t.Fatal("the second Fetch made a request while the first was under way")
	case <-time.After(10 * time.Second):
		close(gate)
		t.Fatal("the second Fetch never said it waits")
	}
	close(gate)
	a, b := <-first, <-second
	if a.err != nil || b.err != nil || a.path != b.path {
		t.Fatalf("first %+v, second %+v", a, b)
	}
	mustContent(t, a.path, content)
	if n := len(o.requests()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}

	// A waiting Fetch gives up when its ctx ends.
	unlock, err := lock(context.Background(), entry{url: &url.URL{}, dir: entryDir(c.Dir, u)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Fetch(ctx, u, "", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch while locked: %v; want the deadline", err)
	}
}

// TestProgress: the progress line is redrawn with \r, at most about ten
// times a second however many reads arrive, reaches 100% and ends with one
// newline; a slow transfer that keeps receiving is not cut by IdleTimeout.
func TestProgress(t *testing.T) {
	content := randomBytes(1<<20, 12)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", itoa(len(content)))
		const chunks = 40
		step := len(content) / chunks
		for i := 0; i < len(content); i += step {
			w.Write(content[i:min(i+step, len(content))])
			http.NewResponseController(w).Flush()
			time.Sleep(15 * time.Millisecond)
		}
	}))
	defer srv.Close()
	var out bytes.Buffer
	// The transfer lasts longer than IdleTimeout, but never pauses that
	// long: each read restarts the timer.
	c := Cache{Dir: t.TempDir(), Client: srv.Client(), IdleTimeout: 200 * time.Millisecond}
	start := time.Now()
	if _, err := c.Fetch(context.Background(), srv.URL+imagePath, "", &out); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	s := out.String()
	draws := strings.Count(s, "\r")
	if limit := int(elapsed/redrawEvery) + 2; draws < 2 || draws > limit {
		t.Errorf("%d drawings in %v; want between 2 and %d", draws, elapsed, limit)
	}
	lines := strings.Split(s, "\r")
	last := strings.TrimRight(lines[len(lines)-1], " \n")
	if !strings.HasSuffix(s, "\n") || strings.Count(s, "\n") != 1 ||
		!strings.Contains(last, "] 100%  1.0 MiB / 1.0 MiB  ") || !strings.HasSuffix(last, "/s") {
		t.Errorf("progress output ends %q", last)
	}
	if !strings.HasPrefix(s, "\r[") {
		t.Errorf("progress output starts %q", s[:min(len(s), 40)])
	}

	// Quiet without a writer, and when the total is not known, no bar.
	b := newBar(&out, 0, -1)
	b.got = 3 << 20
	if got := b.line(time.Second); got != "3.0 MiB  3.0 MiB/s" {
		t.Errorf("line without a total: %q", got)
	}
	newBar(nil, 0, 10).add(5)
}

// TestDefaultClient: with no Client, Fetch uses its own and leaves no
// goroutine behind (its connections are closed).
func TestDefaultClient(t *testing.T) {
	content := randomBytes(1<<18, 13)
	o, srv := newOrigin(t, content)
	before := runtime.NumGoroutine()
	c := Cache{Dir: t.TempDir()}
	path, err := c.Fetch(context.Background(), srv.URL+imagePath, sumOf(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustContent(t, path, content)
	if r := o.requests(); len(r) != 1 {
		t.Fatalf("requests %+v", r)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, %d before Fetch:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHTTPS: https URLs are fetched (with the caller's client, which
// trusts the test server); a URL's password is used but not recorded.
func TestHTTPS(t *testing.T) {
	content := randomBytes(1<<16, 14)
	o := &origin{content: content, etag: `"v1"`}
	srv := httptest.NewTLSServer(o)
	defer srv.Close()
	c := Cache{Dir: t.TempDir(), Client: srv.Client()}
	u := strings.Replace(srv.URL, "https://", "https://user:secret@", 1) + imagePath
	path, err := c.Fetch(context.Background(), u, sumOf(content), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustContent(t, path, content)
	// The password goes to the server, not into the record.
	data, err := os.ReadFile(filepath.Join(filepath.Dir(path), metaFile))
	if err != nil || bytes.Contains(data, []byte("secret")) || !bytes.Contains(data, []byte("user:xxxxx@")) {
		t.Fatalf("record %s, %v; want the password redacted", data, err)
	}
	if r := o.requests(); len(r) != 1 || r[0].auth != "user:secret" {
		t.Fatalf("requests %+v; want one with the URL's credentials", r)
	}
}

// TestFileName: the name in the cache is the URL's base name made safe,
// or "image".
func TestFileName(t *testing.T) {
	long := strings.Repeat("a", 300) + ".qcow2"
	for in, want := range map[string]string{
		"http://h/images/debian-12.qcow2":   "debian-12.qcow2",
		"http://h/a/noble-server.img?x=y#f": "noble-server.img",
		"http://h":                          "image",
		"http://h/":                         "image",
		"http://h/%2e%2e":                   "image",
		"http://h/..%2F..%2Fetc%2Fpasswd":   "passwd",
		"http://h/.hidden.img":              "hidden.img",
		"http://h/a%20b%00c.img":            "a_b_c.img",
		"http://h/%C3%BCn%C3%AF.img":        "_n_.img",
		"http://h/%01%02":                   "image",
		"http://h/x/" + long:                long[len(long)-200:],
		"http://h/.lock":                    "lock",
		"http://h/.meta.json":               "meta.json",
	} {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := fileName(u); got != want {
			t.Errorf("fileName(%s) = %q, want %q", in, got, want)
		}
	}
}

// TestIsTerminal: a pipe is not a terminal, a pseudo-terminal is.
func TestIsTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if IsTerminal(w) {
		t.Error("a pipe is a terminal")
	}
	f, err := os.CreateTemp(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Error("a file is a terminal")
	}
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	if !IsTerminal(ptmx) {
		t.Error("a pseudo-terminal is not a terminal")
	}
}
