package manager

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/guestnet"
	"github.com/minivirt/minivirt/pkg/rundir"
)

// NetworkSocket is where `minivirt network serve` listens for the QEMU of a
// domain exported to libvirt, when no other path is given: beside the
// runtime directory, in a directory others may traverse but not list, since
// libvirt runs QEMU as another user (libvirt-qemu).
func (m *Manager) NetworkSocket(name string) string {
	return filepath.Join(filepath.Dir(m.RunDir), "minivirt-net", name+".sock")
}

// LibvirtXML is a domain's definition for a real libvirtd, its vmchannels
// carried by minivirt's network at socket (NetworkSocket when empty).
func (m *Manager) LibvirtXML(name, socket string) ([]byte, error) {
	d, err := m.Get(name)
	if err != nil {
		return nil, err
	}
	if socket == "" {
		socket = m.NetworkSocket(name)
	}
	if len(socket) > domain.MaxSocketPath {
		return nil, fmt.Errorf("network socket %s: %d bytes, over the %d a Unix socket allows; give a shorter --socket", socket, len(socket), domain.MaxSocketPath)
	}
	return d.LibvirtXML(domain.LibvirtNetwork{Socket: socket, MTU: int(d.NetstackMTU())})
}

// ServeNetwork runs minivirt's own network for a domain that libvirt runs:
// it listens on socket for QEMU's -netdev stream (one QEMU at a time; a
// restarted QEMU connects again), and relays the guest's vmchannel
// connections, one host connection each. The socket is given to qemuUser
// (libvirt's QEMU user) and no one else. It returns when ctx ends.
func (m *Manager) ServeNetwork(ctx context.Context, name, socket, qemuUser string, logger *log.Logger) error {
	d, err := m.Get(name)
	if err != nil {
		return err
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("the stored definition: %w", err)
	}
	if !d.NeedsNetwork() {
		return fmt.Errorf("domain %s has no vmchannels or forwards to serve", name)
	}
	if socket == "" {
		socket = m.NetworkSocket(name)
	}
	uid, gid := -1, -1
	if qemuUser != "" {
		u, err := user.Lookup(qemuUser)
		if err != nil {
			return fmt.Errorf("--qemu-user %s: %w", qemuUser, err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	dir := filepath.Dir(socket)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("network socket directory: %w", err)
	}
	// Every socket minivirt binds goes through the ledger of the runtime
	// root, the supervisors' too: a socket this command or a supervisor
	// left when killed is replaced, and nothing else at a path is touched.
	if err := rundir.EnsureRoot(m.RunDir); err != nil {
		return err
	}
	sockets := rundir.SocketLedger(m.RunDir)
	l, err := sockets.ListenAs(socket, 0o600, uid, gid)
	if err != nil {
		return fmt.Errorf("network socket: %w", err)
	}
	defer l.Close()
	context.AfterFunc(ctx, func() { l.Close() })
	// The same network the supervisor serves; forwards reach the guest
	// through whichever QEMU is attached now.
	network := guestnet.New(d, sockets)
	defer network.Close()
	for _, f := range d.Forwards() {
		if err := network.AddForward(f); err != nil {
			return err
		}
	}
	// The backend the export's QEMU speaks (Domain.LibvirtXML writes the
	// same choice).
	backend, why := d.NetBackend()
	if why != "" {
		logger.Printf("%s: %s, because %s", name, backend, why)
	}
	logger.Printf("serving the network of %s on %s: %d vmchannels, %d forwards", name, socket, len(d.VMChannels()), len(d.Forwards()))
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				network.Close()
				network.Relay().Wait()
				return nil
			}
			return err
		}
		// A fresh stack for each QEMU: a restarted guest starts clean.
		serve, err := network.Attach(conn, backend, logger.Printf)
		if err != nil {
			conn.Close()
			return err
		}
		logger.Printf("QEMU connected")
		err = serve(ctx)
		conn.Close()
		logger.Printf("QEMU disconnected (%v)", err)
	}
}
