# minivirt: `make demo` and `make test` do all the set-up on a fresh Debian 12
# machine (as root they install what is missing; otherwise they print the command).

GO        ?= go
BUILD     := $(CURDIR)/build
BIN       := $(BUILD)/minivirt
FUZZTIME  ?= 5s
export GOFLAGS ?= -buildvcs=false

.PHONY: all build guest deps test go-test fuzz lint demo bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/minivirt
	$(GO) build -o $(BUILD)/demo-service ./examples/demo-service

# The tiny test guest: Debian's cloud kernel (downloaded once, cached) and an
# initramfs of busybox, the virtio modules and guest/.
guest: deps
	@scripts/build-guest.sh $(BUILD)/guest

deps:
	@scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...

# go test: unit tests, and the integration tests, which boot the tiny guest under QEMU.
go-test:
	MINIVIRT_GUEST_DIR=$(BUILD)/guest $(GO) test -count=1 -timeout 15m ./...

# Each fuzz target runs for FUZZTIME: it must find no panic and no round-trip difference.
fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzDomain -fuzztime=$(FUZZTIME) ./pkg/domain

test: deps lint guest go-test fuzz

demo: deps build guest
	@scripts/demo.sh $(BIN) $(BUILD)/demo-service $(BUILD)/guest

# Benchmarks, each beside its baseline in the same run (see BENCHMARKS.md):
# the relay alone against a bare Unix socket, then end to end with the tiny
# guest against guestfwd cmd:socat and plain user-mode TCP, start time
# against bare QEMU, and the CLI with 10,000 domains.
bench: deps build guest
	@mkdir -p $(BUILD)/bench
	$(GO) test -run='^$$' -bench=. -benchmem -count=3 ./pkg/vmchannel | tee $(BUILD)/bench/relay.txt
	$(GO) run ./bench/e2e -minivirt $(BIN) -guest $(BUILD)/guest | tee $(BUILD)/bench/e2e.md

clean:
	rm -rf $(BUILD)
