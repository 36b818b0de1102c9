// Package qga speaks the QEMU guest agent's protocol (qemu-ga) from the
// host side of its virtio-serial channel, a Unix socket.
//
// The protocol is QMP's JSON without a greeting: the client writes one
// command object, {"execute": NAME, "arguments": {...}}, and the agent
// writes back one object, {"return": VALUE} or {"error": {"class": C,
// "desc": D}}, followed by a newline. The channel outlives its clients:
// a reply that an earlier client gave up on, or half a command it wrote,
// can still be in it. So every Client begins with guest-sync-delimited, as
// QEMU's documentation asks: it writes a 0xFF byte (the agent's parser
// resets on it) and the sync with an id of its own, and discards whatever
// it reads until the agent's 0xFF sentinel byte followed by {"return": id}
// with that id. From then on the stream is in step: one reply per command.
//
// Every call is bounded by its context. A guest with no agent running does
// not answer at all (the channel accepts the connection and holds what is
// written): that is a *NoAnswerError when the context's deadline passes,
// never a hang. A call that fails for a time-out or a broken stream leaves
// the Client out of step, so every later call returns the same error: Dial
// again, which syncs again.
//
// QEMU serves one client per channel at a time: while another client is
// connected, a second one is accepted by the kernel only and gets no
// answer either.
package qga

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/minivirt/minivirt/pkg/qmp"
)

// MaxReply is the largest reply a Client reads, in bytes: the guest is not
// trusted to keep its answers small. qemu-ga's largest, guest-file-read of
// its 48 MiB limit, is 64 MiB of base64.
const MaxReply = 64 << 20

// RefusalWait is how long a command that qemu-ga answers only when it
// fails (guest-shutdown, guest-suspend-disk, guest-suspend-ram,
// guest-suspend-hybrid) waits for that answer: without one by then, the
// request stands.
const RefusalWait = 2 * time.Second

// noReply are the commands qemu-ga answers only when they fail.
var noReply = map[string]bool{
	"guest-shutdown":       true,
	"guest-suspend-disk":   true,
	"guest-suspend-ram":    true,
	"guest-suspend-hybrid": true,
}

// ErrNoAnswer is wrapped by every *NoAnswerError.
var ErrNoAnswer = errors.New("the guest agent did not answer")

// NoAnswerError says that the agent did not answer before the context's
// deadline. Command is the command that went unanswered: guest-sync-delimited
// when the agent did not answer at all (no agent runs in the guest, or
// another client holds the channel). Within is how long the call waited.
type NoAnswerError struct {
	Command string
	Within  time.Duration
}

func (e *NoAnswerError) Error() string {
	if e.Command == syncCommand {
		return fmt.Sprintf("the guest agent did not answer within %s: is qemu-guest-agent running in the guest?", e.Within)
	}
	return fmt.Sprintf("the guest agent did not answer %s within %s", e.Command, e.Within)
}

// Is makes errors.Is(err, ErrNoAnswer) hold.
func (e *NoAnswerError) Is(target error) bool { return target == ErrNoAnswer }

// Error is the agent's error reply to a command: its class (e.g.
// CommandNotFound, GenericError) and description.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("the guest agent could not run %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// IsUnsupported reports whether err is the agent saying that it does not
// have a command, or has it disabled (qemu-ga --block-rpcs).
func IsUnsupported(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Class == "CommandNotFound" || e.Class == "CommandDisabled")
}

const (
	syncCommand = "guest-sync-delimited"
	sentinel    = 0xFF
)

// Client is one connection to a guest agent, in step after its sync. Its
// methods may be called from several goroutines; they run one at a time.
type Client struct {
	mu   sync.Mutex
	conn net.Conn
	r    *bufio.Reader
	err  error // set once the stream is out of step
}

// Dial connects to the agent's channel at path and syncs (see the package
// comment), all before ctx ends; a guest whose agent does not answer is a
// *NoAnswerError. The caller closes the Client.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("the guest agent's channel: %w", err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient syncs with the agent on conn, before ctx ends, and returns a
// Client that owns conn; on an error the caller still owns conn.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{conn: conn, r: bufio.NewReader(conn)}
	id := rand.Int64N(1<<53) + 1 // exact in any JSON parser's numbers
	err := c.exchange(ctx, syncCommand, func() error {
		cmd := fmt.Appendf([]byte{sentinel}, `{"execute":%q,"arguments":{"id":%d}}`+"\n", syncCommand, id)
		if _, err := c.conn.Write(cmd); err != nil {
			return err
		}
		for {
			if err := c.skipToSentinel(); err != nil {
				return err
			}
			// What follows a sentinel is a whole reply, ours or one
			// an earlier client's sync left behind; anything else is
			// skipped up to the next sentinel.
			raw, err := c.readValue()
			if errors.Is(err, errNotJSON) {
				continue
			}
			if err != nil {
				return err
			}
			var reply struct {
				Return *int64 `json:"return"`
			}
			if json.Unmarshal(raw, &reply) == nil && reply.Return != nil && *reply.Return == id {
				return nil
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Command sends one command, a JSON object with "execute" (and
// "arguments" when it takes any), and returns the agent's whole reply,
// {"return": ...}, as the agent wrote it. An error reply is an *Error. A
// command qemu-ga answers only on failure (see RefusalWait) returns (nil,
// nil) when no refusal came within RefusalWait, or the channel closed
// meanwhile (the guest went down).
func (c *Client) Command(ctx context.Context, command []byte) ([]byte, error) {
	name, err := CommandName(command)
	if err != nil {
		return nil, err
	}
	var reply []byte
	err = c.exchange(ctx, name, func() error {
		if _, err := c.conn.Write(append(append([]byte{}, command...), '\n')); err != nil {
			return err
		}
		var err error
		if noReply[name] {
			reply, err = c.readRefusal(ctx)
		} else {
			reply, err = c.readValue()
		}
		return err
	})
	if err != nil || reply == nil {
		return nil, err
	}
	var head qmp.Reply
	if err := json.Unmarshal(reply, &head); err != nil || head.Error == nil && head.Return == nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.broken(fmt.Errorf("the guest agent answered %s with %.200q, not a reply", name, reply))
		return nil, c.err
	}
	if head.Error != nil {
		return nil, &Error{Command: name, Class: head.Error.Class, Desc: head.Error.Desc}
	}
	return reply, nil
}

// CommandName checks that command is a guest agent command, a JSON object
// whose "execute" names it, and returns the name.
func CommandName(command []byte) (string, error) {
	var probe struct {
		Execute string `json:"execute"`
	}
	if err := json.Unmarshal(command, &probe); err != nil || probe.Execute == "" {
		return "", fmt.Errorf(`%q is not a guest agent command; give e.g. '{"execute":"guest-info"}'`, command)
	}
	return probe.Execute, nil
}

// Run sends the command name with args (nil: none) and decodes the value
// of its "return" into result (nil: the value is not wanted).
func (c *Client) Run(ctx context.Context, name string, args, result any) error {
	cmd := map[string]any{"execute": name}
	if args != nil {
		cmd["arguments"] = args
	}
	wire, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	reply, err := c.Command(ctx, wire)
	if err != nil || reply == nil || result == nil {
		return err
	}
	var out struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(reply, &out); err != nil {
		return err
	}
	if err := json.Unmarshal(out.Return, result); err != nil {
		return fmt.Errorf("the guest agent's reply to %s: %w", name, err)
	}
	return nil
}

// exchange runs one call's I/O with the connection's deadline at ctx's,
// and words its failure; a failed exchange leaves the Client out of step.
func (c *Client) exchange(ctx context.Context, name string, do func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	began := time.Now()
	deadline, hasDeadline := ctx.Deadline()
	c.conn.SetDeadline(deadline) // the zero time, without one: none
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		c.conn.SetDeadline(time.Unix(1, 0))
	})
	err := do()
	if !stop() {
		<-fired // no deadline is set behind the next call's back
	}
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		err = fmt.Errorf("the guest agent's %s: %w", name, ctx.Err())
	case ctx.Err() != nil, errors.Is(err, errTimeout):
		within := time.Since(began)
		if hasDeadline {
			within = deadline.Sub(began)
		}
		err = &NoAnswerError{Command: name, Within: round(within)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		err = fmt.Errorf("the guest agent's channel closed during %s (QEMU ended it)", name)
	case errors.Is(err, errNotJSON):
		err = fmt.Errorf("the guest agent's reply to %s is not JSON", name)
	default:
		err = fmt.Errorf("the guest agent's %s: %w", name, err)
	}
	c.broken(err)
	return err
}

// errTimeout matches the error of a read or write past the deadline.
var errTimeout = errors.New("i/o timeout")

// broken marks the stream out of step, with the error every later call
// returns; the caller holds c.mu.
func (c *Client) broken(err error) {
	if c.err == nil {
		c.err = err
	}
	c.conn.SetDeadline(time.Unix(1, 0))
}

// round makes a waited time readable: tenths of a second from a second up.
func round(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(10 * time.Millisecond)
}

// skipToSentinel discards input up to and including the next 0xFF byte.
func (c *Client) skipToSentinel() error {
	for {
		_, err := c.r.ReadSlice(sentinel)
		if err != bufio.ErrBufferFull {
			return timeoutOf(err)
		}
	}
}

// errNotJSON is readValue's error for input that is not one JSON value.
var errNotJSON = errors.New("not JSON")

// readValue reads one JSON value, and not a byte beyond it, of at most
// MaxReply bytes.
func (c *Client) readValue() ([]byte, error) {
	lr := &byteReader{r: c.r, left: MaxReply}
	var raw json.RawMessage
	err := json.NewDecoder(lr).Decode(&raw)
	var syntax *json.SyntaxError
	switch {
	case err == nil:
		return raw, nil
	case lr.err != nil:
		return nil, lr.err
	case errors.As(err, &syntax):
		return nil, errNotJSON
	}
	return nil, timeoutOf(err)
}

// readRefusal waits up to RefusalWait (or ctx's end) for the error reply
// of a command that has none on success, and returns nil without one.
func (c *Client) readRefusal(ctx context.Context) ([]byte, error) {
	wait := time.Now().Add(RefusalWait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(wait) {
		wait = dl
	}
	c.conn.SetReadDeadline(wait)
	reply, err := c.readValue()
	switch {
	case err == nil:
		return reply, nil
	case errors.Is(ctx.Err(), context.Canceled):
		return nil, err
	case errors.Is(err, errTimeout), errors.Is(err, io.EOF):
		// The request stands. A refusal that comes after the wait
		// would be read as the next command's reply: the stream is
		// out of step from here.
		c.broken(errors.New("this connection to the guest agent is spent: a refusal may still come after a command with no reply on success; Dial again"))
		return nil, nil
	}
	return nil, err
}

// timeoutOf words a read or write that passed its deadline as errTimeout.
func timeoutOf(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %w", errTimeout, err)
	}
	return err
}

// byteReader hands a JSON decoder one byte per Read, so that it never
// reads beyond the value it decodes, and at most left bytes in all.
type byteReader struct {
	r    *bufio.Reader
	left int
	err  error // the reader's own failure: too long, or the stream's
}

var errTooLarge = fmt.Errorf("the guest agent's reply is over %d bytes", MaxReply)

func (b *byteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.left == 0 {
		b.err = errTooLarge
		return 0, b.err
	}
	ch, err := b.r.ReadByte()
	if err != nil {
		b.err = timeoutOf(err)
		return 0, b.err
	}
	b.left--
	p[0] = ch
	return 1, nil
}
