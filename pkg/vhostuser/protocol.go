// Package vhostuser is a vhost-user back-end for one virtio-net device: it
// speaks the vhost-user protocol (QEMU's docs/interop/vhost-user.rst) with
// QEMU, the front-end, over a Unix stream socket, maps the guest's RAM
// from the memory descriptors QEMU sends, and moves frames between the
// device's split virtqueues and a Link (minivirt's user network) without
// QEMU in the data path. It offers the offloads a TCP/IP stack in the same
// process can honour: checksums left to the receiver, TCP segmentation
// both ways, and mergeable receive buffers.
//
// The guest is not trusted. Every address a descriptor or a ring names is
// checked against the memory QEMU described before it is touched, a chain
// is at most as long as its ring, and a frame is at most MaxFrame bytes; a
// malformed chain is completed empty and dropped, never followed.
package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"
)

// request is a vhost-user message type, front-end to back-end.
type request uint32

// The requests this back-end answers (vhost-user.rst, "Front-end message types").
const (
	reqGetFeatures         request = 1
	reqSetFeatures         request = 2
	reqSetOwner            request = 3
	reqResetOwner          request = 4
	reqSetMemTable         request = 5
	reqSetLogBase          request = 6
	reqSetLogFD            request = 7
	reqSetVringNum         request = 8
	reqSetVringAddr        request = 9
	reqSetVringBase        request = 10
	reqGetVringBase        request = 11
	reqSetVringKick        request = 12
	reqSetVringCall        request = 13
	reqSetVringErr         request = 14
	reqGetProtocolFeatures request = 15
	reqSetProtocolFeatures request = 16
	reqGetQueueNum         request = 17
	reqSetVringEnable      request = 18
	reqSendRARP            request = 19
)

func (r request) String() string {
	names := map[request]string{
		reqGetFeatures: "GET_FEATURES", reqSetFeatures: "SET_FEATURES", reqSetOwner: "SET_OWNER",
		reqResetOwner: "RESET_OWNER", reqSetMemTable: "SET_MEM_TABLE", reqSetLogBase: "SET_LOG_BASE",
		reqSetLogFD: "SET_LOG_FD", reqSetVringNum: "SET_VRING_NUM", reqSetVringAddr: "SET_VRING_ADDR",
		reqSetVringBase: "SET_VRING_BASE", reqGetVringBase: "GET_VRING_BASE", reqSetVringKick: "SET_VRING_KICK",
		reqSetVringCall: "SET_VRING_CALL", reqSetVringErr: "SET_VRING_ERR", reqGetProtocolFeatures: "GET_PROTOCOL_FEATURES",
		reqSetProtocolFeatures: "SET_PROTOCOL_FEATURES", reqGetQueueNum: "GET_QUEUE_NUM", reqSetVringEnable: "SET_VRING_ENABLE",
		reqSendRARP: "SEND_RARP",
	}
	if n, ok := names[r]; ok {
		return n
	}
	return fmt.Sprintf("request %d", uint32(r))
}

// Header flags.
const (
	flagVersion   = 0x1 // the protocol's one version
	flagReply     = 0x4
	flagNeedReply = 0x8
)

const (
	headerSize = 12
	// maxPayload bounds a message's payload; the largest this back-end
	// reads is a memory table of maxRegions regions (8 + 8*32 bytes).
	maxPayload = 4096
	// maxFDs is the most descriptors one message carries (a memory table
	// of maxRegions regions).
	maxFDs = 8
	// maxRegions is the most memory regions a table may describe.
	maxRegions = 8
)

// message is one vhost-user message and the descriptors that came with it.
type message struct {
	req     request
	flags   uint32
	payload []byte
	fds     []int
}

// closeFDs closes the descriptors no one took.
func (m *message) closeFDs() {
	for _, fd := range m.fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	m.fds = nil
}

// takeFD hands over the message's first descriptor, or -1.
func (m *message) takeFD() int {
	if len(m.fds) == 0 {
		return -1
	}
	fd := m.fds[0]
	m.fds[0] = -1
	return fd
}

func (m *message) u64() (uint64, error) {
	if len(m.payload) < 8 {
		return 0, fmt.Errorf("%v: payload of %d bytes, want 8", m.req, len(m.payload))
	}
	return binary.LittleEndian.Uint64(m.payload), nil
}

// state is the vring-state payload: a queue index and a number.
func (m *message) state() (index, num uint32, err error) {
	if len(m.payload) < 8 {
		return 0, 0, fmt.Errorf("%v: payload of %d bytes, want 8", m.req, len(m.payload))
	}
	return binary.LittleEndian.Uint32(m.payload), binary.LittleEndian.Uint32(m.payload[4:]), nil
}

// errTruncated is a message whose descriptors did not all fit.
var errTruncated = errors.New("more descriptors than a message may carry")

// readMessage reads one message from conn; the descriptors that come with
// it are received close-on-exec (Go's ReadMsgUnix asks for it) and are the
// caller's to close.
func readMessage(conn *net.UnixConn) (*message, error) {
	var hdr [headerSize]byte
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	n, oobn, flags, _, err := conn.ReadMsgUnix(hdr[:], oob)
	m := &message{}
	if oobn > 0 {
		cmsgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, c := range cmsgs {
				if fds, err := unix.ParseUnixRights(&c); err == nil {
					m.fds = append(m.fds, fds...)
				}
			}
		}
	}
	if err != nil {
		m.closeFDs()
		return nil, err
	}
	if n == 0 {
		m.closeFDs()
		return nil, io.EOF
	}
	if flags&unix.MSG_CTRUNC != 0 {
		m.closeFDs()
		return nil, errTruncated
	}
	if n < headerSize {
		if _, err := io.ReadFull(conn, hdr[n:]); err != nil {
			m.closeFDs()
			return nil, fmt.Errorf("message header: %w", err)
		}
	}
	m.req = request(binary.LittleEndian.Uint32(hdr[0:]))
	m.flags = binary.LittleEndian.Uint32(hdr[4:])
	size := binary.LittleEndian.Uint32(hdr[8:])
	if size > maxPayload {
		m.closeFDs()
		return nil, fmt.Errorf("%v: payload of %d bytes, over %d", m.req, size, maxPayload)
	}
	if len(m.fds) > maxFDs {
		m.closeFDs()
		return nil, errTruncated
	}
	m.payload = make([]byte, size)
	if _, err := io.ReadFull(conn, m.payload); err != nil {
		m.closeFDs()
		return nil, fmt.Errorf("%v payload: %w", m.req, err)
	}
	return m, nil
}

// reply writes the answer to req.
func reply(conn *net.UnixConn, req request, payload []byte) error {
	b := make([]byte, headerSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], uint32(req))
	binary.LittleEndian.PutUint32(b[4:], flagVersion|flagReply)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	copy(b[headerSize:], payload)
	_, err := conn.Write(b)
	return err
}

func replyU64(conn *net.UnixConn, req request, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return reply(conn, req, b[:])
}
