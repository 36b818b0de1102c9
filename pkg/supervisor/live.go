package supervisor

import (
	"errors"
	"fmt"

	"github.com/minivirt/minivirt/pkg/domain"
)

// changeLive adds or removes a vmchannel or a forward while the domain
// runs, on minivirt's own network; QEMU's cannot change its rules. Changes
// run one at a time, and the live domain (what status lists) is updated
// before the change is acknowledged, so the listing is what the guest
// reaches.
func (s *supervisor) changeLive(req Request) (*domain.VMChannel, error) {
	if !s.netstack {
		if s.plan.Network == "" {
			return nil, fmt.Errorf("the domain started without a network; use --config (it takes effect at the next start)")
		}
		return nil, fmt.Errorf("the domain runs on QEMU's user network, which cannot add or remove a rule while it runs; use --config (it takes effect at the next start)")
	}
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	var vc *domain.VMChannel
	s.mu.Lock()
	next := s.live.Clone()
	s.mu.Unlock()
	switch req.Op {
	case OpAddVMChannel:
		if req.VMChannel == nil {
			return nil, errors.New("no vmchannel given")
		}
		added, err := next.AddVMChannel(*req.VMChannel)
		vc = &added
		if err != nil {
			return nil, err
		}
		if err := s.net.AddChannel(added); err != nil {
			return nil, err
		}
	case OpRemoveVMChannel:
		gone, err := next.RemoveVMChannel(req.Port, req.Address)
		if err != nil {
			return nil, err
		}
		vc = &gone
		s.net.RemoveChannel(gone.AddrPort())
	case OpAddForward:
		if req.Forward == nil {
			return nil, errors.New("no forward given")
		}
		f, err := next.AddForward(*req.Forward)
		if err != nil {
			return nil, err
		}
		if err := s.net.AddForward(f); err != nil {
			return nil, err
		}
	case OpRemoveForward:
		f, err := next.RemoveForward(req.Port, req.Host)
		if err != nil {
			return nil, err
		}
		s.net.RemoveForward(f.Name())
	}
	s.mu.Lock()
	s.live = next
	s.mu.Unlock()
	s.logf("changed live: %s", req.Op)
	return vc, nil
}
