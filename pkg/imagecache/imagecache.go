// Package imagecache downloads disk images (cloud images) over HTTP or
// HTTPS once, into a cache directory, and hands out the path of the
// complete file.
//
// The cache holds one directory per URL, named by the hex sha256 of the URL
// (without its fragment):
//
//	DIR/<sha256 of the URL>/
//	    .lock       flock'd by the Fetch working on this URL
//	    .meta.json  the URL, the file's name and size, its sha256 once it is
//	                complete, the server's ETag and Last-Modified
//	    NAME.part   a download under way or interrupted
//	    NAME        the complete file, made only by renaming NAME.part
//
// NAME is the base name of the URL's path, reduced to letters, digits and
// "._+-" (anything else becomes "_", leading dots are dropped); a URL
// without one gets "image". The files of the cache start with a dot, so
// NAME never collides with them.
//
// A Fetch that fails leaves the URL's directory, with .lock and, when some
// data arrived that a later Fetch can use, NAME.part and .meta.json.
//
// NAME exists only once its whole content arrived and, when the caller gave
// a sha256, matched it: until then the data stays in NAME.part, which a later
// Fetch resumes (an HTTP Range request guarded by If-Range, so a file that
// changed on the server restarts from zero) or restarts. Once NAME exists the
// URL is never fetched again; removing the URL's directory is how to fetch it
// anew.
package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultIdleTimeout is how long a transfer may go without receiving a
// byte before Fetch gives up on it, when Cache.IdleTimeout is zero.
const DefaultIdleTimeout = 2 * time.Minute

// Names inside a URL's directory besides NAME and NAME.part. They start
// with a dot, which fileName never produces.
const (
	lockFile = ".lock"
	metaFile = ".meta.json"
	partExt  = ".part"
)

// Cache is a directory of downloaded images. Its zero value is not usable:
// Dir must be set. A Cache holds no state of its own beyond its fields, so
// any number of Fetch calls, in one process or several, may share a Dir.
type Cache struct {
	// Dir is the cache directory; Fetch creates it and the URLs'
	// directories (mode 0700) when they are missing. minivirt keeps it
	// under its state directory. The images themselves are mode 0644.
	Dir string
	// Client makes the requests. nil means a client of Fetch's own with
	// timeouts for connecting, the TLS handshake and the response
	// headers, the environment's proxy, and no transparent compression;
	// its connections are closed before Fetch returns. A given client's
	// own timeouts apply as well; its Timeout, if set, limits a whole
	// transfer, which a large image may need more than.
	Client *http.Client
	// IdleTimeout limits how long a transfer may receive nothing; 0 means
	// DefaultIdleTimeout. It ends the transfer as an interruption would,
	// leaving NAME.part to resume.
	IdleTimeout time.Duration
}

// ChecksumError reports an image whose sha256 is not the one the caller
// asked for.
type ChecksumError struct {
	URL  string // the image's URL, its password (if any) redacted
	Got  string // the image's sha256, lower-case hex
	Want string // the sha256 the caller gave, lower-case hex
	// Cached is the path of the complete file in the cache when the
	// mismatch is with a file fetched earlier: that file is kept, since
	// the given sum may be the wrong one. It is "" when the mismatch is
	// with what a download just received: that data was removed.
	Cached string
}

func (e *ChecksumError) Error() string {
	if e.Cached != "" {
		return fmt.Sprintf("image %s: sha256 is %s, want %s; the file fetched earlier is kept as %s (remove %s to fetch it again)",
			e.URL, e.Got, e.Want, e.Cached, filepath.Dir(e.Cached))
	}
	return fmt.Sprintf("image %s: sha256 is %s, want %s; nothing was kept", e.URL, e.Got, e.Want)
}

// meta is the content of metaFile. While only NAME.part exists it describes
// the download under way (SHA256 is empty); once NAME exists it describes
// NAME.
type meta struct {
	URL          string `json:"url"` // its password, if any, redacted
	Name         string `json:"name"`
	Size         int64  `json:"size"` // -1: not known (no Content-Length)
	SHA256       string `json:"sha256,omitempty"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

// entry is one URL's place in the cache.
type entry struct {
	url  *url.URL // without its fragment
	key  string   // url.String(), what the directory is named after and requested
	dir  string
	name string
}

func (e entry) final() string { return filepath.Join(e.dir, e.name) }
func (e entry) part() string  { return filepath.Join(e.dir, e.name+partExt) }
func (e entry) meta() string  { return filepath.Join(e.dir, metaFile) }

// shown is the URL as errors and the progress line name it.
func (e entry) shown() string { return e.url.Redacted() }

// Fetch returns the path of the complete file that rawURL names, in the
// cache, downloading it first if the cache does not hold it yet.
//
// rawURL must be an absolute http or https URL; anything else is an error
// and nothing is requested or created. want is the file's sha256 in hex
// (either case) or "" to accept any content; a want that is not 64 hex
// digits is an error before anything is requested.
//
// When the cache already holds the file, Fetch makes no request. A non-empty
// want is compared with the sha256 recorded when the file was fetched (the
// file is read only when no sum was recorded); on a mismatch Fetch returns a
// *ChecksumError naming both sums and keeps the file. A cached file whose
// size is not the recorded one is an error, and is kept too.
//
// Otherwise Fetch downloads the file into NAME.part, resuming one that an
// earlier call left: it asks for the rest with a Range request, guarded by
// If-Range with the ETag (or else Last-Modified) the earlier response
// carried, and appends only when the server answers 206 with the matching
// Content-Range; a 200 (no range support, or a changed file) restarts the
// file from zero, and any other answer to the Range request is followed by
// a request for the whole file. A NAME.part without an ETag or Last-Modified
// to guard the Range request with is restarted, and one that already holds
// every byte announced is checked without a request. Once all of it arrived
// (as many bytes as the server announced), and its sha256 equals want when
// want is given, NAME.part is renamed to NAME and its size and sha256 are
// recorded. A sha256 other than want removes NAME.part and its record and
// returns a *ChecksumError: nothing is kept.
//
// Errors name the URL: a status other than 200 or 206, a body shorter than
// announced, a stalled transfer (see Cache.IdleTimeout) and the
// cancellation of ctx (the error wraps ctx's error). All of them but the
// checksum leave what arrived in NAME.part for the next call.
//
// progress, when not nil, receives a progress line, redrawn with a carriage
// return at most ten times a second and ended with a newline; the caller
// passes its terminal (see IsTerminal), or nil to stay quiet.
//
// Calls for the same URL, in any process, take turns through an flock on
// the URL's lock file: a call that waits says so on progress and, once its
// turn comes, finds the file the other call fetched. The wait ends with ctx.
// No goroutine that Fetch starts outlives it.
func (c Cache) Fetch(ctx context.Context, rawURL, want string, progress io.Writer) (string, error) {
	if c.Dir == "" {
		return "", errors.New("imagecache: Cache.Dir is not set")
	}
	u, err := parseURL(rawURL)
	if err != nil {
		return "", err
	}
	if want, err = normaliseSum(want); err != nil {
		return "", fmt.Errorf("image %s: %w", u.Redacted(), err)
	}
	key := u.String()
	sum := sha256.Sum256([]byte(key))
	e := entry{url: u, key: key, dir: filepath.Join(c.Dir, hex.EncodeToString(sum[:])), name: fileName(u)}
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return "", fmt.Errorf("image %s: %w", e.shown(), err)
	}
	unlock, err := lock(ctx, e, progress)
	if err != nil {
		return "", err
	}
	defer unlock()

	if st, err := os.Stat(e.final()); err == nil {
		return cached(e, st, want)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("image %s: %w", e.shown(), err)
	}

	client := c.Client
	if client == nil {
		t := defaultTransport()
		defer t.CloseIdleConnections()
		client = &http.Client{Transport: t}
	}
	idle := c.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	d := download{e: e, client: client, want: want, idle: idle, progress: progress}
	if err := d.run(ctx); err != nil {
		return "", err
	}
	return e.final(), nil
}

// parseURL accepts an absolute http or https URL with a host, and drops its
// fragment (never sent to a server, so not part of what names the file).
func parseURL(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("image %q: not a URL: %w", rawURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("image %s: only http and https URLs can be fetched", u.Redacted())
	}
	if u.Host == "" {
		return nil, fmt.Errorf("image %s: the URL names no host", u.Redacted())
	}
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}

// normaliseSum returns want in lower case, or an error if it is neither ""
// nor 64 hex digits.
func normaliseSum(want string) (string, error) {
	if want == "" {
		return "", nil
	}
	want = strings.ToLower(want)
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("the sha256 %q is not 64 hex digits", want)
	}
	return want, nil
}

// fileName is the name of a URL's file in its directory: see the package
// documentation.
func fileName(u *url.URL) string {
	base := path.Base(u.Path)
	var b strings.Builder
	for _, r := range base {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', strings.ContainsRune("._+-", r):
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := strings.TrimLeft(b.String(), ".")
	if len(name) > 200 {
		name = name[len(name)-200:] // the end holds the extension
		name = strings.TrimLeft(name, ".")
	}
	if name == "" || strings.Trim(name, "_") == "" {
		return "image"
	}
	return name
}

// lock takes the flock on e's lock file, waiting (and saying so on
// progress) while another Fetch holds it, until ctx ends. The returned
// function releases it.
func lock(ctx context.Context, e entry, progress io.Writer) (func(), error) {
	f, err := os.OpenFile(filepath.Join(e.dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", e.shown(), err)
	}
	fd := int(f.Fd())
	wait := 10 * time.Millisecond
	for said := false; ; {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(fd, unix.LOCK_UN); f.Close() }, nil
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			f.Close()
			return nil, fmt.Errorf("image %s: locking %s: %w", e.shown(), f.Name(), err)
		}
		if !said && progress != nil {
			fmt.Fprintf(progress, "waiting for another fetch of %s\n", e.shown())
			said = true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("image %s: waiting for another fetch of it: %w", e.shown(), ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// cached answers for a URL whose complete file st (at e.final()) exists.
func cached(e entry, st fs.FileInfo, want string) (string, error) {
	m, err := readMeta(e)
	if err != nil || m.URL != e.shown() {
		// Not recorded: the rename happened and the process ended before
		// the record was written. Only a complete, verified download is
		// ever renamed, so the file stands; record it now.
		m = meta{URL: e.shown(), Name: e.name, Size: -1}
	}
	if m.Size >= 0 && st.Size() != m.Size {
		return "", fmt.Errorf("image %s: the cached file %s is %d bytes, but %d were fetched; remove %s to fetch it again",
			e.shown(), e.final(), st.Size(), m.Size, e.dir)
	}
	if m.SHA256 == "" {
		f, err := os.Open(e.final())
		if err != nil {
			return "", fmt.Errorf("image %s: %w", e.shown(), err)
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("image %s: reading the cached file: %w", e.shown(), err)
		}
		m.Size, m.SHA256 = n, hex.EncodeToString(h.Sum(nil))
		if err := writeMeta(e, m); err != nil {
			return "", err
		}
	}
	if want != "" && m.SHA256 != want {
		return "", &ChecksumError{URL: e.shown(), Got: m.SHA256, Want: want, Cached: e.final()}
	}
	return e.final(), nil
}

func readMeta(e entry) (meta, error) {
	var m meta
	data, err := os.ReadFile(e.meta())
	if err != nil {
		return m, err
	}
	err = json.Unmarshal(data, &m)
	return m, err
}

// writeMeta replaces the record of e whole (a reader sees the old one or
// the new one), and makes it durable.
func writeMeta(e entry, m meta) error {
	data, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		return err
	}
	tmp := e.meta() + ".tmp"
	err = writeFileSync(tmp, append(data, '\n'))
	if err == nil {
		err = os.Rename(tmp, e.meta())
	}
	if err == nil {
		err = syncDir(e.dir)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("image %s: recording it: %w", e.shown(), err)
	}
	return nil
}

func writeFileSync(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// defaultTransport is the transport of Fetch's own client: a fresh one per
// call, so that closing its idle connections leaves nothing running.
func defaultTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: time.Minute,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       30 * time.Second,
		DisableCompression:    true,
	}
}

// download fetches one entry into its .part and, when complete and
// verified, renames it. It runs with the entry's lock held.
type download struct {
	e        entry
	client   *http.Client
	want     string
	idle     time.Duration
	progress io.Writer
}

// errIdle is the cause of a transfer cancelled for receiving nothing.
var errIdle = errors.New("no data received")

// run downloads d.e, resuming its .part when it can. A resume the server
// refuses in a way that still sends data (200) continues as a fresh
// download in the same response; one it answers without usable data (416,
// a Content-Range that does not fit) costs a second request, from zero.
func (d download) run(ctx context.Context) error {
	fresh := false
	for {
		m, size, ok := d.resumable()
		if fresh {
			ok = false
		}
		if ok && m.Size == size {
			// Everything arrived before; only the check and the rename
			// were missing.
			h, err := d.hashPart(size)
			if err != nil {
				return err
			}
			return d.finish(m, h, size)
		}
		retry, err := d.transfer(ctx, m, size, ok)
		if err != nil || !retry {
			return err
		}
		fresh = true
	}
}

// resumable reports the record and size of d.e's .part and whether they
// allow a resume: some bytes, a record of the same URL, a validator for
// If-Range, and no more bytes than the server announced.
func (d download) resumable() (meta, int64, bool) {
	st, err := os.Stat(d.e.part())
	if err != nil || st.Size() == 0 {
		return meta{}, 0, false
	}
	m, err := readMeta(d.e)
	if err != nil || m.URL != d.e.shown() || m.SHA256 != "" || validator(m) == "" {
		return meta{}, 0, false
	}
	if m.Size >= 0 && st.Size() > m.Size {
		return meta{}, 0, false
	}
	return m, st.Size(), true
}

// validator is the If-Range value for m: its ETag when strong (a weak one
// never matches in If-Range), else its Last-Modified, else "".
func validator(m meta) string {
	if m.ETag != "" && !strings.HasPrefix(m.ETag, "W/") {
		return m.ETag
	}
	return m.LastModified
}

// transfer makes one request: for the rest of the .part (which holds have
// bytes described by m) when resume is set, else for the whole file. It
// reports retry when the server's answer carries no usable data and a
// request from zero should follow.
func (d download) transfer(ctx context.Context, m meta, have int64, resume bool) (retry bool, err error) {
	e := d.e
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.key, nil)
	if err != nil {
		return false, fmt.Errorf("image %s: %w", e.shown(), err)
	}
	// Asking for the identity encoding also stops Go's transport from
	// decompressing behind our back, which would break sizes and ranges.
	req.Header.Set("Accept-Encoding", "identity")
	if resume {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
		req.Header.Set("If-Range", validator(m))
	}
	// The idle timer covers the wait for the response headers too.
	timer := time.AfterFunc(d.idle, func() { cancel(errIdle) })
	defer timer.Stop()
	resp, err := d.client.Do(req)
	if err != nil {
		return false, d.transferError(ctx, err, have, -1)
	}
	defer resp.Body.Close()

	var total int64 // -1: not known
	switch {
	case resp.StatusCode == http.StatusPartialContent && resume:
		if !d.rangeFits(resp, m, have) {
			return true, nil
		}
		total = m.Size
		if total < 0 {
			total, _ = contentRangeTotal(resp.Header.Get("Content-Range"))
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && resume:
		return true, nil
	case resp.StatusCode == http.StatusOK:
		m = meta{URL: e.shown(), Name: e.name, Size: resp.ContentLength,
			ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified")}
		if m.Size < 0 {
			m.Size = -1
		}
		have, total = 0, m.Size
		// Old bytes go before the new record comes: a .part never sits
		// under the record of another response, and a .part without a
		// record is never resumed.
		if err := rmIfExists(e.part()); err != nil {
			return false, fmt.Errorf("image %s: %w", e.shown(), err)
		}
		if err := writeMeta(e, m); err != nil {
			return false, err
		}
	default:
		return false, fmt.Errorf("image %s: the server answered %s", e.shown(), resp.Status)
	}

	h := sha256.New()
	var f *os.File
	if have > 0 {
		if h, err = d.hashPart(have); err != nil {
			return false, err
		}
		f, err = os.OpenFile(e.part(), os.O_WRONLY, 0)
		if err == nil {
			_, err = f.Seek(have, io.SeekStart)
		}
	} else {
		f, err = os.OpenFile(e.part(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		return false, fmt.Errorf("image %s: %w", e.shown(), err)
	}

	timer.Reset(d.idle) // hashing what the .part holds took time too
	bar := newBar(d.progress, have, total)
	body := &meter{r: resp.Body, timer: timer, idle: d.idle, bar: bar}
	n, err := io.CopyBuffer(struct{ io.Writer }{f}, io.TeeReader(body, h), make([]byte, 256<<10))
	bar.done()
	got := have + n
	if err == nil && total >= 0 && got < total {
		err = io.ErrUnexpectedEOF
	}
	if err == nil && total >= 0 && got > total {
		err = fmt.Errorf("the server sent more than the %d bytes it announced", total)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, d.transferError(ctx, err, got, total)
	}
	m.Size = got
	return false, d.finish(m, h, got)
}

// rangeFits reports whether a 206 answer continues the .part: it is of the
// same file (its validator, when it sends one, is the recorded one) and
// starts where the .part ends, running to the end of the file.
func (d download) rangeFits(resp *http.Response, m meta, have int64) bool {
	if et := resp.Header.Get("ETag"); et != "" && m.ETag != "" && et != m.ETag {
		return false
	}
	if lm := resp.Header.Get("Last-Modified"); lm != "" && m.ETag == "" && m.LastModified != "" && lm != m.LastModified {
		return false
	}
	first, last, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
	if !ok || first != have {
		return false
	}
	if total >= 0 {
		if last != total-1 || (m.Size >= 0 && total != m.Size) {
			return false
		}
	}
	if resp.ContentLength >= 0 && resp.ContentLength != last-first+1 {
		return false
	}
	return true
}

// transferError describes a transfer that ended early, having received
// got bytes of total (-1: not known). The .part stays for the next call.
func (d download) transferError(ctx context.Context, err error, got, total int64) error {
	shown := d.e.shown()
	if cause := context.Cause(ctx); cause == errIdle {
		return fmt.Errorf("image %s: %v for %v after %d bytes; fetch again to resume", shown, errIdle, d.idle, got)
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		// The caller's cancellation: wrap it, for errors.Is.
		return fmt.Errorf("image %s: interrupted after %d bytes: %w", shown, got, ctxErr)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		if total >= 0 {
			return fmt.Errorf("image %s: the server sent %d of %d bytes and closed the connection; fetch again to resume", shown, got, total)
		}
		return fmt.Errorf("image %s: the connection ended after %d bytes; fetch again to resume", shown, got)
	}
	return fmt.Errorf("image %s: %w", shown, err)
}

// hashPart returns a sha256 hash fed with the first n bytes of the .part.
func (d download) hashPart(n int64) (hash.Hash, error) {
	h := sha256.New()
	f, err := os.Open(d.e.part())
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", d.e.shown(), err)
	}
	defer f.Close()
	if _, err := io.CopyN(h, f, n); err != nil {
		return nil, fmt.Errorf("image %s: reading %s: %w", d.e.shown(), f.Name(), err)
	}
	return h, nil
}

// finish checks the complete .part (size bytes, hashed by h) against
// d.want and either makes it the cached file, recording it, or removes it.
func (d download) finish(m meta, h hash.Hash, size int64) error {
	e := d.e
	sum := hex.EncodeToString(h.Sum(nil))
	if d.want != "" && sum != d.want {
		err := &ChecksumError{URL: e.shown(), Got: sum, Want: d.want}
		// Both are ours, and worthless: what arrived is not what was asked.
		if rerr := errors.Join(rmIfExists(e.part()), rmIfExists(e.meta())); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	if err := os.Rename(e.part(), e.final()); err != nil {
		return fmt.Errorf("image %s: %w", e.shown(), err)
	}
	m.Size, m.SHA256 = size, sum
	return writeMeta(e, m)
}

func rmIfExists(name string) error {
	if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// parseContentRange parses "bytes FIRST-LAST/TOTAL"; total is -1 for "*".
func parseContentRange(s string) (first, last, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	first, err1 = strconv.ParseInt(a, 10, 64)
	last, err2 = strconv.ParseInt(b, 10, 64)
	total = -1
	if tot != "*" {
		total, err3 = strconv.ParseInt(tot, 10, 64)
	}
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first {
		return 0, 0, 0, false
	}
	return first, last, total, true
}

func contentRangeTotal(s string) (int64, bool) {
	_, _, total, ok := parseContentRange(s)
	return total, ok && total >= 0
}

// meter passes a response body through, restarting the idle timer and
// advancing the progress bar on every read that brings data.
type meter struct {
	r     io.Reader
	timer *time.Timer
	idle  time.Duration
	bar   *bar
}

func (m *meter) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if n > 0 {
		m.timer.Reset(m.idle)
		m.bar.add(int64(n))
	}
	return n, err
}

// IsTerminal reports whether f (not nil) is a terminal, that is whether
// the TCGETS ioctl succeeds on it: the condition for passing it to Fetch
// as its progress writer.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
