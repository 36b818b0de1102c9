package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
)

// connectTimeout bounds OpConnect's dial of the guest. A port nobody
// listens on is refused at once; a guest that does not answer for its
// address (still booting, or its network is not up) fails after the
// stack's neighbour probes, about three seconds.
const connectTimeout = 5 * time.Second

// connect opens OpConnect's connection to the guest's TCP port and returns
// the stream that relays the control connection to it. Its errors say what
// is wrong in the user's terms; a refusal wraps syscall.ECONNREFUSED.
func (s *supervisor) connect(ctx context.Context, port uint16) (func(net.Conn), error) {
	name := s.d.Name
	if port == 0 {
		return nil, errors.New("guest port 0: must be 1-65535")
	}
	if !s.netstack {
		if s.plan.Network == "" {
			return nil, fmt.Errorf("domain %s has no network, so nothing reaches its guest's ports: put it on minivirt's own network (<vmchannels network='netstack'/> in its <devices>, with `minivirt edit %s`) and start it again", name, name)
		}
		return nil, fmt.Errorf("domain %s runs on QEMU's user network, which has no way into the guest but a forward set at start: add one (`minivirt port add %s --guest-port %d --listen 2222 --config`, then start it again) and connect to 127.0.0.1:2222, or put the domain on minivirt's own network (<vmchannels network='netstack'/>; it has no NAT)", name, name, port)
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	stream, err := s.net.Connect(ctx, port)
	switch {
	case err == nil:
		return stream, nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("guest port %d: nothing listens on it in the guest (yet): %w", port, err)
	case errors.Is(err, syscall.EHOSTUNREACH):
		return nil, fmt.Errorf("guest port %d: the guest does not answer at %s (it is still booting, or has not brought its network up): %w", port, domain.GuestAddress, err)
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("guest port %d: no answer from the guest within %s: %w", port, connectTimeout, err)
	}
	return nil, fmt.Errorf("guest port %d: %w", port, err)
}
