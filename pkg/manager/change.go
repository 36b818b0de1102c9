package manager

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// Scope says where a device change applies, as virsh attach-device's flags
// do: the running domain (Live), the stored definition (Config), or both.
type Scope struct{ Live, Config bool }

// ScopeFor resolves virsh's flags: --live and --config as given, else
// --current: the running domain when it runs, the definition when not.
func (m *Manager) ScopeFor(name string, live, config bool) (Scope, error) {
	if live || config {
		if live {
			if _, _, err := m.running(name); err != nil {
				return Scope{}, fmt.Errorf("--live: %w", err)
			}
		}
		return Scope{Live: live, Config: config}, nil
	}
	_, o, err := m.Observe(name)
	if err != nil {
		return Scope{}, err
	}
	if o.Active() {
		return Scope{Live: true}, nil
	}
	return Scope{Config: true}, nil
}

// apply makes a change live (through the supervisor) and then in the
// definition, as the scope says; a live change that fails changes nothing.
// It returns the supervisor's answer to a live change.
func (m *Manager) apply(ctx context.Context, name string, sc Scope, req supervisor.Request, change func(*domain.Domain) error) (supervisor.Response, error) {
	var resp supervisor.Response
	if sc.Live {
		if _, _, err := m.running(name); err != nil {
			return resp, err
		}
		ctx, cancel := context.WithTimeout(ctx, controlTimeout)
		defer cancel()
		var err error
		if resp, err = m.call(ctx, name, req); err != nil {
			return resp, err
		}
	}
	if sc.Config {
		if _, err := m.Change(name, change); err != nil {
			return resp, err
		}
	}
	return resp, nil
}

// AddVMChannel adds a vmchannel, live and/or to the definition, and returns
// it as the domain has it (defaults applied).
func (m *Manager) AddVMChannel(ctx context.Context, name string, vc domain.VMChannel, sc Scope) (domain.VMChannel, error) {
	var added domain.VMChannel
	resp, err := m.apply(ctx, name, sc, supervisor.Request{Op: supervisor.OpAddVMChannel, VMChannel: &vc},
		func(d *domain.Domain) (err error) { added, err = d.AddVMChannel(vc); return err })
	if resp.VMChannel != nil {
		added = *resp.VMChannel
	}
	return added, err
}

// RemoveVMChannel removes the vmchannel on port (and address, when valid)
// and returns it.
func (m *Manager) RemoveVMChannel(ctx context.Context, name string, port uint16, addr netip.Addr, sc Scope) (domain.VMChannel, error) {
	var gone domain.VMChannel
	resp, err := m.apply(ctx, name, sc, supervisor.Request{Op: supervisor.OpRemoveVMChannel, Port: port, Address: addr},
		func(d *domain.Domain) (err error) { gone, err = d.RemoveVMChannel(port, addr); return err })
	if resp.VMChannel != nil {
		gone = *resp.VMChannel
	}
	return gone, err
}

// AddForward adds an inbound forward, live and/or to the definition.
func (m *Manager) AddForward(ctx context.Context, name string, f domain.Forward, sc Scope) error {
	_, err := m.apply(ctx, name, sc, supervisor.Request{Op: supervisor.OpAddForward, Forward: &f},
		func(d *domain.Domain) error { _, err := d.AddForward(f); return err })
	return err
}

// RemoveForward removes the forward to guest port (on host, when given).
func (m *Manager) RemoveForward(ctx context.Context, name string, port uint16, host string, sc Scope) error {
	_, err := m.apply(ctx, name, sc, supervisor.Request{Op: supervisor.OpRemoveForward, Port: port, Host: host},
		func(d *domain.Domain) error { _, err := d.RemoveForward(port, host); return err })
	return err
}

// ChangeMedia ejects the medium of the removable drive dev (a cdrom or
// floppy, by target dev), or puts source in, as virsh change-media does;
// source must be an absolute path.
func (m *Manager) ChangeMedia(ctx context.Context, name, dev, source string, mode domain.MediaMode, force bool, sc Scope) error {
	if source != "" && !filepath.IsAbs(source) {
		return fmt.Errorf("change-media source %q: must be an absolute path", source)
	}
	change := func(d *domain.Domain) error {
		if err := d.CheckMediaChange(dev, mode); err != nil {
			return err
		}
		return d.SetMedium(dev, source)
	}
	if sc.Config { // before a live change: both are made, or neither
		d, err := m.Get(name)
		if err != nil {
			return err
		}
		if err := change(d.Clone()); err != nil {
			return err
		}
	}
	_, err := m.apply(ctx, name, sc, supervisor.Request{Op: supervisor.OpChangeMedia,
		Media: &supervisor.MediaRequest{Disk: dev, Source: source, Force: force, Mode: mode}}, change)
	return err
}
