package supervisor

import (
	"context"
	"fmt"
	"log"
	"sync"
	"time"

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
			rt, v := r.want, r.ver
			done := r.wrote >= v
			r.mu.Unlock()
			if done {
				break
			}
			err := r.write(rt)
			r.mu.Lock()
			if err == nil {
				r.wrote, r.err = v, nil
			} else {
				r.err = err
			}
			r.cond.Broadcast()
			r.mu.Unlock()
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

func (r *recorder) write(rt store.Runtime) error {
	st, err := r.open()
	if err != nil {
		return err
	}
	defer st.Close()
	return st.SetRuntime(r.name, rt)
}
