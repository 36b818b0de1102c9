package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
)

// recorder writes the supervisor's runtime record to the store, the newest
// state first and retried until it lands: another minivirt process may hold
// the store for a while, and a lost record would later be read as a crash.
// It writes from its own goroutine, so no event waits on the store's lock.
type recorder struct {
	name  string
	open  func() (*store.Store, error)
	log   *log.Logger
	wake  chan struct{}
	quit  chan struct{}
	once  sync.Once
	mu    sync.Mutex
	cond  *sync.Cond
	want  store.Runtime
	ver   uint64 // version of want
	wrote uint64 // newest version that landed
	err   error  // the last failure, while want has not landed
	// gen is the start this supervisor claimed: every write compares it,
	// so no record of a newer start is overwritten. superseded is set once
	// the record was found to name another start; nothing is written after.
	gen        uint64
	superseded bool
}

func newRecorder(name string, open func() (*store.Store, error), l *log.Logger) *recorder {
	r := &recorder{name: name, open: open, log: l, wake: make(chan struct{}, 1), quit: make(chan struct{})}
	r.cond = sync.NewCond(&r.mu)
	go r.loop()
	return r
}

// set asks for rt to be recorded, replacing any state not yet written.
func (r *recorder) set(rt store.Runtime) uint64 {
	r.mu.Lock()
	r.ver++
	r.want = rt
	v := r.ver
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return v
}

// flush records rt and waits until it has landed, at most until ctx ends.
func (r *recorder) flush(ctx context.Context, rt store.Runtime) error {
	v := r.set(rt)
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.wrote < v {
		if r.superseded {
			return fmt.Errorf("the state record of %s: %w", r.name, r.err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("the state record of %s did not land (%v): %w", r.name, r.err, ctx.Err())
		}
		r.cond.Wait()
	}
	return nil
}

func (r *recorder) stop() { r.once.Do(func() { close(r.quit) }) }

func (r *recorder) loop() {
	for {
		select {
		case <-r.wake:
		case <-r.quit:
			return
		}
		for delay := 20 * time.Millisecond; ; delay = min(2*delay, time.Second) {
			r.mu.Lock()
			rt, v, gen := r.want, r.ver, r.gen
			done := r.wrote >= v || r.superseded
			r.mu.Unlock()
			if done {
				break
			}
			err := r.write(rt, gen)
			r.mu.Lock()
			switch {
			case err == nil:
				r.wrote, r.err = v, nil
			case errors.Is(err, store.ErrSuperseded), errors.Is(err, store.ErrNotFound):
				r.superseded, r.err = true, err
			default:
				r.err = err
			}
			superseded := r.superseded
			r.cond.Broadcast()
			r.mu.Unlock()
			if superseded {
				r.log.Printf("recording state: %v; this supervisor writes no more", err)
				break
			}
			if err == nil {
				continue // a newer state may have come meanwhile
			}
			r.log.Printf("recording state (will retry): %v", err)
			select {
			case <-time.After(delay):
			case <-r.quit:
				return
			}
		}
	}
}

func (r *recorder) write(rt store.Runtime, gen uint64) error {
	st, err := r.open()
	if err != nil {
		return err
	}
	defer st.Close()
	rt.Generation = gen
	return st.UpdateRuntimeIf(r.name, gen, func(old *store.Runtime) error {
		*old = rt
		return nil
	})
}

// claim makes this supervisor's start the domain's current one: in one
// transaction it checks that no other start's processes live, takes the
// next generation and records rt (the domain paused, starting up). From
// then on every write compares that generation.
func (r *recorder) claim(rt store.Runtime, self proc.ID) error {
	st, err := r.open()
	if err != nil {
		return err
	}
	defer st.Close()
	var gen uint64
	err = st.UpdateRuntime(r.name, func(old *store.Runtime) error {
		if old.Active() && old.Supervisor != self && (proc.Alive(old.QEMU) || proc.Alive(old.Supervisor)) {
			return fmt.Errorf("domain %s is already %s (supervisor pid %d, QEMU pid %d)", r.name, old.State, old.Supervisor.PID, old.QEMU.PID)
		}
		gen = old.Generation + 1
		rt.Generation = gen
		*old = rt
		return nil
	})
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.gen = gen
	r.mu.Unlock()
	return nil
}

// generation is the start this supervisor claimed (0 before the claim).
func (r *recorder) generation() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen
}

// pending says why the newest state has not landed yet, or "" when it has
// (or no write has failed so far).
func (r *recorder) pending() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.wrote < r.ver && r.err != nil && !r.superseded {
		return r.err.Error()
	}
	return ""
}
