# minivirt: `make demo` and `make test` do all the set-up on a fresh Debian 12
# machine (as root they install what is missing; otherwise they print the command).

GO        ?= go
BUILD     := $(CURDIR)/build
BIN       := $(BUILD)/minivirt
FUZZTIME  ?= 10s
export GOFLAGS ?= -buildvcs=false

.PHONY: all build guest guest-generic cloud-image deps test go-test fuzz corpus lint demo bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/minivirt
	$(GO) build -o $(BUILD)/demo-service ./examples/demo-service

# The tiny test guest: Debian's cloud kernel (downloaded once, cached) and an
# initramfs of busybox, the virtio modules and guest/. guest-generic is the
# same on Debian's generic kernel, for what the cloud kernel lacks (9p): the
# tests use it, the demo does not.
guest: deps
	@scripts/build-guest.sh $(BUILD)/guest

guest-generic: deps
	@scripts/build-guest.sh $(BUILD)/guest-generic generic

# A Debian 12 cloud image, as users download one (qcow2, BIOS GRUB, cloud-init
# with NoCloud, sshd, qemu-guest-agent, DHCP), built from Debian's packages
# with mmdebstrap and cached in build/cloud until the script changes. As root.
cloud-image: deps
	@scripts/build-cloud-image.sh $(BUILD)/cloud

deps:
	@scripts/deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...

# go test: unit tests, and the integration tests, which boot the tiny guest under QEMU.
go-test:
	MINIVIRT_REQUIRE_ALL=1 MINIVIRT_GUEST_DIR=$(BUILD)/guest MINIVIRT_GUEST_GENERIC_DIR=$(BUILD)/guest-generic MINIVIRT_CLOUD_IMAGE=$(BUILD)/cloud/debian-12.qcow2 $(GO) test -count=1 -timeout 15m ./...

# Each fuzz target runs for FUZZTIME: it must find no panic and no round-trip
# difference. -fuzzminimizetime=0: Go minimizes every new interesting input
# for up to 60s, and with inputs the size of a domain document the workers
# spent the whole run there (23 executions in 5s; 240,000 without).
# The last line says how many executions it ran.
# FuzzBuild goes on from an accepted definition through the start's checks
# and the command line's builder: no panic, refusals in one line.
# FuzzVring lays a hostile guest's descriptors and rings in memory between
# guard pages and runs the vhost-user device's transmit drain and receive
# put on them: no panic, no access outside guest memory, no frame over
# MaxFrame, no more chains completed than made available. A run
# fails on a failing input Go writes to testdata; Go's own "context deadline
# exceeded" when the time is up with a worker busy is not one.
fuzz:
	@set -e; for target in FuzzDomain:./pkg/domain FuzzBuild:./pkg/launcher FuzzVring:./pkg/vhostuser; do \
	  name=$${target%%:*}; pkg=$${target#*:}; \
	  $(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=0 $$pkg 2>&1 | tee $(BUILD)/fuzz.log | grep -v 'gathering baseline'; \
	  if grep -q 'Failing input written to' $(BUILD)/fuzz.log; then echo "fuzz: $$name found a failing input (above)"; exit 1; fi; \
	  grep -o 'execs: [0-9]*' $(BUILD)/fuzz.log | tail -1 | sed "s/^/fuzz: $$name ran /"; \
	done

# The corpus (pkg/domain/testdata/corpus, the project's shared corpus beside
# the checkout, and directories named in MINIVIRT_CORPUS): how many domains
# define, how many start would refuse here, and why; then, as root, the same
# files defined by a private libvirtd beside minivirt.
corpus: build
	@$(GO) test -count=1 -run='^TestCorpus$$' -v ./pkg/domain | grep -E 'corpus:|(refused at define|refused at start) +[0-9]+:' | sed 's/^ *corpus_test.go:[0-9]*: //'
	@if [ "$$(id -u)" -eq 0 ]; then MINIVIRT_REQUIRE_ALL=1 $(GO) test -count=1 -run='^TestCorpusBesideLibvirt$$' -v ./integration | grep -E 'corpus beside libvirt:|^ +corpus_test.go:[0-9]+: +[0-9]+  ' | sed 's/^ *corpus_test.go:[0-9]*: //'; fi

test: deps lint guest guest-generic cloud-image go-test fuzz corpus

demo: deps build guest
	@scripts/demo.sh $(BIN) $(BUILD)/demo-service $(BUILD)/guest

# Benchmarks, each beside its baseline in the same run (see BENCHMARKS.md):
# the relay alone against a bare Unix socket, then end to end with the tiny
# guest (netstack's vhost-user and -netdev stream backends at two MTUs,
# slirp, guestfwd cmd:socat, plain user-mode TCP, the guest's own loopback;
# interleaved rounds after a warm-up; alone: go run ./bench/e2e -only
# datapath), start time against the same argv run bare, density, a busy
# host, the CLI with 10,000 domains, save and restore, a cloud image to the
# first ssh login beside virt-install, and a rig's guest booted against
# restored.
bench: deps build guest cloud-image
	@mkdir -p $(BUILD)/bench
	$(GO) test -run='^$$' -bench=. -benchmem -count=3 ./pkg/vmchannel | tee $(BUILD)/bench/relay.txt
	MINIVIRT_BIN=$(BIN) MINIVIRT_GUEST_DIR=$(BUILD)/guest $(GO) test -run='^$$' -bench=RigStart -benchtime=10x ./pkg/rig | tee $(BUILD)/bench/rig.txt
	$(GO) run ./bench/e2e -minivirt $(BIN) -guest $(BUILD)/guest -cloud $(BUILD)/cloud/debian-12.qcow2 | tee $(BUILD)/bench/e2e.md

clean:
	rm -rf $(BUILD)
