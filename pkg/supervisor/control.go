package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/guestnet"
	"github.com/minivirt/minivirt/pkg/qmp"
	"github.com/minivirt/minivirt/pkg/store"
)

// Control operations the supervisor answers on its control socket. QMP allows
// one client per monitor, so every command that acts on a running domain
// goes through the supervisor.
const (
	OpStatus   = "status"
	OpShutdown = "shutdown"
	OpReboot   = "reboot"
	OpDestroy  = "destroy"
	OpSuspend  = "suspend"
	OpResume   = "resume"
	OpQMP      = "qmp"
	// Changes while the domain runs, on minivirt's own network.
	OpAddVMChannel    = "vmchannel-add"
	OpRemoveVMChannel = "vmchannel-remove"
	OpAddForward      = "forward-add"
	OpRemoveForward   = "forward-remove"
	// OpConnect opens a connection to the guest's TCP port Port, on
	// minivirt's own network, and makes the control connection its byte
	// stream once the Response says it is open (see Connect).
	OpConnect = "connect"
	// OpConsole attaches to the guest's primary console and makes the
	// control connection its byte stream once the Response says so (see
	// Console); with Force, this client takes the input over.
	OpConsole = "console"
	// OpSave saves the guest's state to the file at Path and ends QEMU:
	// the domain is then shut off (saved). With Paused, a restore leaves
	// the guest's CPUs stopped.
	OpSave = "save"
	// OpSnapshot creates, reverts to or deletes an internal snapshot of
	// the running domain's disks (Snapshot).
	OpSnapshot = "snapshot"
	// OpChangeMedia ejects or inserts the medium of a removable drive
	// (Media).
	OpChangeMedia = "change-media"
)

// Request is one control request; one request per connection.
//
// The protocol: the client sends one Request as a JSON object and the
// supervisor answers one Response, a line of JSON (ending in a newline).
// After an OpConnect Response without Error, the connection carries the
// guest connection's bytes both ways, each end of stream passed on as a
// half-close; for that, the client sends nothing after its request until it
// has read the Response (bytes that come with the request are refused).
type Request struct {
	Op  string          `json:"op"`
	QMP json.RawMessage `json:"qmp,omitempty"` // with OpQMP: a whole QMP command
	// With the live changes: what to add, or the port (and address of a
	// vmchannel, or host side of a forward) of what to remove. With
	// OpConnect, Port is the guest's TCP port.
	VMChannel *domain.VMChannel `json:"vmchannel,omitempty"`
	Forward   *domain.Forward   `json:"forward,omitempty"`
	Port      uint16            `json:"port,omitempty"`
	Address   netip.Addr        `json:"address,omitzero"`
	Host      string            `json:"host,omitempty"`
	// Timeout, with OpShutdown, is how long the guest has to power off:
	// after it the domain is running again, not "in shutdown" for ever.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Force, with OpConsole, takes the console's input from the client
	// that holds it.
	Force bool `json:"force,omitempty"`
	// Path, with OpSave, is the file to save to: an absolute path.
	Path string `json:"path,omitempty"`
	// Paused, with OpSave: restore the guest with its CPUs stopped.
	Paused bool `json:"paused,omitempty"`
	// Snapshot is OpSnapshot's request.
	Snapshot *SnapshotRequest `json:"snapshot,omitempty"`
	// Media is OpChangeMedia's request.
	Media *MediaRequest `json:"media,omitempty"`
}

// Response answers a Request.
type Response struct {
	Error string `json:"error,omitempty"`
	// Starting is set when the supervisor is not ready yet: the request
	// was not carried out, and may be sent again.
	Starting bool `json:"starting,omitempty"`
	// MonitorLost is set when the request failed because the QMP monitor
	// is lost.
	MonitorLost bool `json:"monitor_lost,omitempty"`
	// Refused is set when OpConnect failed because the guest refused the
	// connection: nothing listens on its port.
	Refused bool            `json:"refused,omitempty"`
	Status  *Status         `json:"status,omitempty"`
	QMP     json.RawMessage `json:"qmp,omitempty"`
	// VMChannel is the vmchannel a live change added or removed, as the
	// domain has it.
	VMChannel *domain.VMChannel `json:"vmchannel,omitempty"`
	// ConsoleInput, answering OpConsole, says that this client holds the
	// console's input; without it, the client sees the output only.
	ConsoleInput bool `json:"console_input,omitempty"`
}

// Status is the supervisor's view of its domain.
type Status struct {
	State       string `json:"state"`
	Reason      string `json:"reason,omitempty"`
	Detail      string `json:"detail,omitempty"`
	MonitorLost bool   `json:"monitor_lost,omitempty"`
	// VMChannels and Forwards are what runs now, live changes included,
	// each with its counters.
	VMChannels []ChannelStatus `json:"vmchannels,omitempty"`
	// VirtioPorts are the virtio-serial ports with the sockets bound for
	// them, minivirt's own choices included.
	VirtioPorts []domain.VirtioPort `json:"virtio_ports,omitempty"`
	// Addresses are the guest's: from the DHCP leases of minivirt's own
	// network, or QEMU's user network's fixed one.
	Addresses []GuestAddress  `json:"addresses,omitempty"`
	Forwards  []ForwardStatus `json:"forwards,omitempty"`
	// Connects count OpConnect's connections, by guest port.
	Connects []ConnectStatus `json:"connects,omitempty"`
	// NIC counts the guest's frames on minivirt's own network (Rx: to the
	// guest); nil on QEMU's user network, which counts nothing, or none.
	NIC *NICCounters `json:"nic,omitempty"`
	// RecordPending says why the store does not have the state yet (its
	// database could not be written); the supervisor keeps trying.
	RecordPending string `json:"record_pending,omitempty"`
}

// ForwardStatus is one inbound forward the supervisor serves, with its
// counters (BytesIn: guest to host).
type ForwardStatus = guestnet.ForwardStatus

// ConnectStatus counts the connections OpConnect opened to one guest port
// (BytesIn: guest to host).
type ConnectStatus = guestnet.ConnectStatus

// NICCounters count the guest's frames and bytes on minivirt's own network.
type NICCounters = guestnet.NICCounters

// GuestAddress is one address of the guest, as domifaddr shows it.
type GuestAddress struct {
	Interface string       `json:"interface"`
	MAC       string       `json:"mac"`
	Address   netip.Prefix `json:"address"`
	Source    string       `json:"source"` // "lease" or "user network"
}

// ChannelStatus is one vmchannel the supervisor serves, with its counters.
type ChannelStatus = guestnet.ChannelStatus

// ErrStarting is returned by Call while the supervisor is still starting.
var ErrStarting = errors.New("the domain is still starting; try again in a moment")

// ErrMonitorLost is wrapped by Call's error when the supervisor could not
// carry a request out because its QMP monitor is lost.
var ErrMonitorLost = errors.New("QMP monitor lost")

// ErrRefused is wrapped by Connect's error when the guest refused the
// connection: nothing listens on its port.
var ErrRefused = errors.New("connection refused by the guest")

// remoteError is the supervisor's error, in its words.
type remoteError struct {
	msg                  string
	monitorLost, refused bool
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Is(target error) bool {
	return (target == ErrMonitorLost && e.monitorLost) || (target == ErrRefused && e.refused)
}

// answerError is the error a Response carries, or nil.
func answerError(resp Response) error {
	if resp.Starting {
		return ErrStarting
	}
	if resp.Error != "" {
		return &remoteError{msg: resp.Error, monitorLost: resp.MonitorLost, refused: resp.Refused}
	}
	return nil
}

// Call sends one request to the control socket at path and waits for the
// answer, at most until ctx ends.
func Call(ctx context.Context, path string, req Request) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Response{}, fmt.Errorf("supervisor: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, fmt.Errorf("supervisor: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("supervisor: no answer: %w", err)
	}
	return resp, answerError(resp)
}

// maxResponseLine bounds the Response line Connect reads.
const maxResponseLine = 64 << 10

// Connect asks the supervisor on the control socket at path for a
// connection to the guest's TCP port (OpConnect). On success the returned
// connection is the guest connection's byte stream: what is read from it
// is what the guest sends, ending (io.EOF) when the guest closes or
// half-closes its side; what is written to it reaches the guest; its
// CloseWrite half-closes towards the guest, which reads end of stream and
// can still answer; Close ends both ways. It has no deadline. ctx bounds
// the request and its answer only. When the guest refused the connection
// the error wraps ErrRefused; while the supervisor starts, it is
// ErrStarting.
func Connect(ctx context.Context, path string, port uint16) (*net.UnixConn, error) {
	c, _, err := openStream(ctx, path, Request{Op: OpConnect, Port: port})
	return c, err
}

// Console attaches to the guest's primary console through the control
// socket at path (OpConsole). On success the returned connection carries
// the guest's output from now on, and what is written to it reaches the
// guest while this client holds the input, which input says; a client
// that does not hold it sees the output only. With force it takes the
// input over from the client that holds it, which is told in its output.
// ctx bounds the request and its answer only.
func Console(ctx context.Context, path string, force bool) (conn *net.UnixConn, input bool, err error) {
	c, resp, err := openStream(ctx, path, Request{Op: OpConsole, Force: force})
	return c, resp.ConsoleInput, err
}

// openStream sends a request whose answer turns the connection into a
// stream (OpConnect, OpConsole), and returns the stream.
func openStream(ctx context.Context, path string, req Request) (*net.UnixConn, Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, Response{}, fmt.Errorf("supervisor: %w", err)
	}
	c := conn.(*net.UnixConn)
	resp, err := streamAnswer(ctx, c, req)
	if err == nil {
		err = answerError(resp)
	}
	if err != nil {
		c.Close()
		return nil, resp, err
	}
	return c, resp, nil
}

// streamAnswer sends c's request and reads its Response, a byte at a time:
// the stream's first bytes follow the line at once, and must stay in c. It
// leaves c without a deadline.
func streamAnswer(ctx context.Context, c *net.UnixConn, request Request) (Response, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	req, err := json.Marshal(request)
	if err != nil {
		stop()
		return Response{}, err
	}
	var line []byte
	if _, err = c.Write(req); err == nil {
		line, err = readLine(c, maxResponseLine)
	}
	if !stop() { // ctx ended: the deadline may be set at any moment
		return Response{}, fmt.Errorf("supervisor: no answer: %w", ctx.Err())
	}
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	if err != nil {
		return Response{}, fmt.Errorf("supervisor: no answer: %w", err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return Response{}, fmt.Errorf("supervisor: answer %q: %w", line, err)
	}
	return resp, nil
}

// readLine reads up to and including the first newline, one byte at a time,
// at most max bytes.
func readLine(r io.Reader, max int) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < max {
		if _, err := io.ReadFull(r, b); err != nil {
			return line, err
		}
		line = append(line, b[0])
		if b[0] == '\n' {
			return line, nil
		}
	}
	return line, fmt.Errorf("an answer longer than %d bytes", max)
}

// A handler answers one control request. When it returns a stream too, the
// control connection becomes that stream once the Response is sent:
// stream takes the connection and owns it from then on. It is called even
// when the Response could not be sent, with the connection closed, so that
// it releases what it holds.
type handler func(ctx context.Context, req Request) (resp Response, stream func(net.Conn))

// controlTimeouts bound one control connection: reading its request,
// carrying it out, and writing the answer. A stream that follows has none.
type controlTimeouts struct{ read, handle, write time.Duration }

// recorded answers a verb that changed the state once the record says so:
// as with virsh, the state read after suspend or resume returns is the
// new one (Shutdown refuses a domain the record says is paused).
func (s *supervisor) recorded(ctx context.Context) Response {
	if err := s.rec.flush(ctx, s.snapshot()); err != nil {
		return Response{Error: err.Error()}
	}
	return Response{}
}

// serveControl answers control requests until l is closed.
func serveControl(l net.Listener, handle handler) {
	serveControlWithin(l, handle, controlTimeouts{read: 10 * time.Second, handle: 60 * time.Second, write: 10 * time.Second})
}

// serveControlWithin is serveControl with other timeouts.
func serveControlWithin(l net.Listener, handle handler, within controlTimeouts) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go serveRequest(c, handle, within)
	}
}

// serveRequest answers the one request of control connection c.
func serveRequest(c net.Conn, handle handler, within controlTimeouts) {
	c.SetReadDeadline(time.Now().Add(within.read))
	dec := json.NewDecoder(c)
	var req Request
	if err := dec.Decode(&req); err != nil {
		c.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), within.handle)
	var resp Response
	var stream func(net.Conn)
	if (req.Op == OpConnect || req.Op == OpConsole) && buffered(dec) {
		resp = Response{Error: "the client sent bytes after its connect request, before the answer; it must wait for the answer"}
	} else {
		resp, stream = handle(ctx, req)
	}
	cancel()
	c.SetWriteDeadline(time.Now().Add(within.write))
	err := json.NewEncoder(c).Encode(resp)
	if stream == nil {
		c.Close()
		return
	}
	if err == nil {
		// The stream lasts as long as both its ends want it.
		err = c.SetDeadline(time.Time{})
	}
	if err != nil {
		c.Close()
	}
	stream(c)
}

// buffered reports whether dec has read bytes beyond the value it decoded.
func buffered(dec *json.Decoder) bool {
	n, _ := dec.Buffered().Read(make([]byte, 1))
	return n > 0
}

// handle answers one control request.
func (s *supervisor) handle(ctx context.Context, req Request) (Response, func(net.Conn)) {
	s.mu.Lock()
	ready := s.ready
	s.mu.Unlock()
	if !ready {
		return Response{Starting: true, Error: ErrStarting.Error()}, nil
	}
	if req.Op == OpConsole {
		if s.console == nil {
			return Response{Error: fmt.Sprintf("domain %s has no console minivirt serves (its first console or serial port has a <source> of its own)", s.d.Name)}, nil
		}
		c, holds, err := s.console.Join(req.Force)
		if err != nil {
			return Response{Error: err.Error()}, nil
		}
		return Response{ConsoleInput: holds}, c.Serve
	}
	if req.Op == OpConnect {
		stream, err := s.connect(ctx, req.Port)
		if err != nil {
			return Response{Error: err.Error(), Refused: errors.Is(err, syscall.ECONNREFUSED)}, nil
		}
		return Response{}, stream
	}
	return s.answer(ctx, req), nil
}

// answer answers one control request other than OpConnect, once the
// supervisor is ready.
func (s *supervisor) answer(ctx context.Context, req Request) Response {
	callCtx, cancel := context.WithTimeout(ctx, qmpCallTimeout)
	defer cancel()
	fail := func(err error) Response { return Response{Error: err.Error()} }
	switch req.Op {
	case OpStatus:
		s.mu.Lock()
		st := &Status{State: s.m.State, Reason: s.m.Reason, Detail: s.m.Detail, MonitorLost: s.m.MonitorLost,
			VirtioPorts: s.plan.VirtioPorts}
		s.mu.Unlock()
		st.VMChannels, st.Forwards, st.Connects = s.net.Channels(), s.net.Forwards(), s.net.Connects()
		st.Addresses = s.addresses()
		if s.netstack {
			nic := s.net.NIC()
			st.NIC = &nic
		}
		st.RecordPending = s.rec.pending()
		return Response{Status: st}
	case OpShutdown, OpReboot:
		if err := s.monitorUp(); err != nil {
			return Response{Error: err.Error(), MonitorLost: true}
		}
		s.mu.Lock()
		state := s.m.State
		s.mu.Unlock()
		if state == store.StatePaused {
			// A press now would wait for the next resume, and power the
			// guest off then.
			return fail(fmt.Errorf("the domain is paused: its guest cannot act on the ACPI power button; resume it first"))
		}
		kind := ReqShutdown
		if req.Op == OpReboot {
			kind = ReqReboot
		}
		// The machine learns of the request before the button is pressed:
		// the guest's SHUTDOWN can come before QMP's reply.
		if err := s.step(Input{Kind: kind}); err != nil {
			return fail(err)
		}
		if kind == ReqShutdown {
			s.shutdownTimer(req.Timeout)
		}
		return Response{}
	case OpDestroy:
		s.step(Input{Kind: ReqDestroy})
		go func() { // when quit is not possible, kill at once
			select {
			case <-s.done:
			case <-time.After(quitGrace):
				s.qemu.Process.Kill()
			}
		}()
		select {
		case <-s.done:
		case <-ctx.Done():
			return fail(fmt.Errorf("QEMU did not exit: %w", ctx.Err()))
		}
		return Response{}
	case OpSave:
		if err := s.save(req.Path, req.Paused); err != nil {
			return fail(err)
		}
		return Response{}
	case OpSnapshot:
		if req.Snapshot == nil {
			return fail(errors.New("snapshot: no request"))
		}
		if err := s.diskSnapshot(*req.Snapshot); err != nil {
			return fail(err)
		}
		return Response{}
	case OpChangeMedia:
		if req.Media == nil {
			return fail(errors.New("change-media: no request"))
		}
		if err := s.changeMedia(callCtx, *req.Media); err != nil {
			return fail(err)
		}
		return Response{}
	case OpSuspend:
		if err := qmp.Stop(callCtx, s.monitor()); err != nil {
			return fail(err)
		}
		s.step(Input{Kind: EvStop}) // now, not when the STOP event comes
		return s.recorded(callCtx)
	case OpResume:
		if err := qmp.Cont(callCtx, s.monitor()); err != nil {
			return fail(err)
		}
		s.step(Input{Kind: EvResume})
		return s.recorded(callCtx)
	case OpAddVMChannel, OpRemoveVMChannel, OpAddForward, OpRemoveForward:
		vc, err := s.changeLive(req)
		if err != nil {
			return fail(err)
		}
		return Response{VMChannel: vc}
	case OpQMP:
		out, err := s.monitor().RunRaw(callCtx, req.QMP)
		if err != nil {
			return fail(err)
		}
		return Response{QMP: out}
	}
	return fail(fmt.Errorf("unknown control operation %q", req.Op))
}

// addresses are the guest's addresses: the leases minivirt's own network
// handed out, or the one QEMU's user network always gives its guest.
func (s *supervisor) addresses() []GuestAddress {
	if s.netstack {
		var out []GuestAddress
		for _, l := range s.net.Leases() {
			out = append(out, GuestAddress{Interface: "net0", MAC: l.MAC, Address: l.Address, Source: "lease"})
		}
		return out
	}
	if s.plan.Network != domain.NetworkSlirp {
		return nil
	}
	mac := "52:54:00:12:34:56" // QEMU's default
	if nic, ok := s.d.UserNIC(); ok && nic.MAC != "" {
		mac = nic.MAC
	}
	return []GuestAddress{{Interface: "net0", MAC: mac, Address: netip.PrefixFrom(domain.GuestAddress, domain.UserNet.Bits()), Source: "user network"}}
}

// defaultShutdownTimeout is how long a guest has to power off when the
// request gives no time.
const defaultShutdownTimeout = 60 * time.Second

// shutdownTimer ends "in shutdown" after d when the guest has not powered
// off by then; only the newest request's timer counts.
func (s *supervisor) shutdownTimer(d time.Duration) {
	if d <= 0 {
		d = defaultShutdownTimeout
	}
	s.mu.Lock()
	s.shutdownSeq++
	seq := s.shutdownSeq
	s.mu.Unlock()
	time.AfterFunc(d, func() {
		s.mu.Lock()
		current := seq == s.shutdownSeq
		s.mu.Unlock()
		if current {
			s.step(Input{Kind: EvShutdownTimedOut, Detail: fmt.Sprintf("the guest did not power off within %s of the ACPI power button", d)})
		}
	})
}

// monitorUp fails, saying why, while the QMP monitor is lost.
func (s *supervisor) monitorUp() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m.MonitorLost {
		return fmt.Errorf("the QMP monitor is lost (%s); the guest cannot be asked to power off: use `minivirt destroy`", s.m.Detail)
	}
	return nil
}
